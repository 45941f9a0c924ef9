//! Colour for a terminal, and none anywhere else.
//!
//! Only status words are coloured; everything is readable without it.
//! Colour is on when stdout is a terminal and `NO_COLOR` is unset
//! (<https://no-color.org>); `main` decides and passes it down.

use crate::model::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Good,
    Bad,
    Pending,
    Dim,
    Bold,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Self::Good => "32",
            Self::Bad => "31",
            Self::Pending => "33",
            Self::Dim => "2",
            Self::Bold => "1",
        }
    }

    /// The style of a verdict word.
    pub(crate) fn of(verdict: &Verdict) -> Self {
        match verdict {
            Verdict::Passed => Self::Good,
            Verdict::Running => Self::Pending,
            Verdict::Superseded | Verdict::Cancelled => Self::Dim,
            Verdict::Failed | Verdict::TimedOut | Verdict::Error | Verdict::Other(_) => Self::Bad,
        }
    }
}

/// Wraps text in a style's escape codes, or leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paint {
    pub enabled: bool,
}

impl Paint {
    pub(crate) fn paint(self, style: Style, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{}m{text}\x1b[0m", style.code())
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_escape_codes_when_disabled() {
        assert_eq!(
            Paint { enabled: false }.paint(Style::Bad, "failed"),
            "failed"
        );
        assert_eq!(
            Paint { enabled: true }.paint(Style::Bad, "failed"),
            "\x1b[31mfailed\x1b[0m"
        );
    }
}
