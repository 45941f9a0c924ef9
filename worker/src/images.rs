//! Which container images a worker runs jobs in: `worker.allowed_images`
//! (glob patterns) and `worker.default_image` (for a job whose
//! `warren.toml` names none). Used by the `container` executor only; the
//! other executors refuse a job that asks for an image.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::fmt;
use warren_common::ids::ImageRef;

/// The images a worker allows, and the one it uses when a job names none.
#[derive(Clone)]
pub struct ImagePolicy {
    patterns: Vec<String>,
    set: GlobSet,
    default: Option<ImageRef>,
}

impl ImagePolicy {
    /// Compiles `patterns` (`*` stays within one `/` part of a name, `**`
    /// crosses them: `registry:5000/team/*`, `debian:*`). The default image
    /// is allowed whatever the patterns say: the operator chose it.
    pub fn new(patterns: &[String], default: Option<ImageRef>) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("pattern {pattern:?}: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
            default,
        })
    }

    /// No image at all: what a worker of another executor has.
    pub fn none() -> Self {
        Self {
            patterns: Vec::new(),
            set: GlobSet::empty(),
            default: None,
        }
    }

    /// The image a job runs in: its own if allowed, else the default; `Err`
    /// is the job's `error` message, naming the keys to change.
    pub fn choose(&self, asked: Option<&ImageRef>) -> Result<ImageRef, String> {
        match asked {
            Some(image) if self.allows(image) => Ok(image.clone()),
            Some(image) => Err(format!(
                "image `{image}` is not allowed on this worker (worker.allowed_images = {:?}, \
                 worker.default_image = {})",
                self.patterns,
                self.default_text()
            )),
            None => self.default.clone().ok_or_else(|| {
                "the job names no image (`image` in warren.toml) and this worker has no \
                 worker.default_image"
                    .to_owned()
            }),
        }
    }

    fn allows(&self, image: &ImageRef) -> bool {
        self.default.as_ref() == Some(image) || self.set.is_match(image.as_str())
    }

    fn default_text(&self) -> String {
        self.default.as_ref().map_or_else(
            || "none".to_owned(),
            |image| format!("{:?}", image.as_str()),
        )
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// `worker.default_image`.
    pub fn default_image(&self) -> Option<&ImageRef> {
        self.default.as_ref()
    }
}

impl Default for ImagePolicy {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for ImagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImagePolicy")
            .field("allowed", &self.patterns)
            .field("default", &self.default)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> ImageRef {
        ImageRef::parse(name).unwrap()
    }

    #[test]
    fn a_job_gets_its_image_when_allowed_and_the_default_without_one() {
        let policy = ImagePolicy::new(
            &["debian:*".into(), "registry:5000/team/*".into()],
            Some(image("ci:base")),
        )
        .unwrap();
        for allowed in [
            "debian:bookworm-slim",
            "registry:5000/team/py:3.12",
            "ci:base",
        ] {
            assert_eq!(
                policy.choose(Some(&image(allowed))).unwrap(),
                image(allowed)
            );
        }
        assert_eq!(policy.choose(None).unwrap(), image("ci:base"));
        for refused in ["ubuntu:24.04", "registry:5000/team/x/y", "ci:other"] {
            let err = policy.choose(Some(&image(refused))).unwrap_err();
            assert!(
                err.contains(&format!("`{refused}`")) && err.contains("worker.allowed_images"),
                "{err}"
            );
        }
    }

    #[test]
    fn without_a_default_a_job_must_name_its_image() {
        let policy = ImagePolicy::new(&["*".into()], None).unwrap();
        assert!(policy.choose(Some(&image("anything:1"))).is_ok());
        let err = policy.choose(None).unwrap_err();
        assert!(err.contains("worker.default_image"), "{err}");
        assert!(ImagePolicy::new(&["a[".into()], None).is_err());
        let nothing = ImagePolicy::none();
        assert!(nothing.choose(Some(&image("debian:12"))).is_err());
    }
}
