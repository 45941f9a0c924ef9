//! How components authenticate to git hosts: the `[git]` table, the same in
//! the watcher's, the dispatcher's and the workers' config, since all three
//! fetch the repositories.
//!
//! ```toml
//! [git]
//! ssh_key = "/run/secrets/deploy_key"       # WARREN_GIT__SSH_KEY: for ssh:// and user@host: URLs
//! https_username = "x-access-token"         # WARREN_GIT__HTTPS_USERNAME (default "git")
//! https_token_file = "/run/secrets/token"   # WARREN_GIT__HTTPS_TOKEN_FILE: read once, at start
//! credential_helper = true                  # WARREN_GIT__CREDENTIAL_HELPER: git's own helpers
//! ```
//!
//! When a host asks for credentials, each way that applies is offered once,
//! in this order: for ssh, the ssh agent (`SSH_AUTH_SOCK`), then `ssh_key`;
//! for https, the token, then git's credential helpers (`credential.helper`
//! in git's config: `store`, `cache`, a forge's helper). Credentials in the
//! URL itself are used first by libgit2 and never logged (URLs are shown
//! masked). When every way has been refused, the fetch fails with a message
//! that names the `[git]` keys.

use crate::config::{ConfigError, ConfigSource, read_secret_file};
use git2::{Cred, CredentialType, RemoteCallbacks};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// `[git]` as written in a config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSettings {
    /// A private key (OpenSSH format, no passphrase) for ssh URLs.
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// The user name sent with the https token.
    #[serde(default)]
    pub https_username: Option<String>,
    /// A file holding the token (or password) for https URLs.
    #[serde(default)]
    pub https_token_file: Option<PathBuf>,
    /// Whether git's own credential helpers are asked for https URLs.
    #[serde(default = "default_credential_helper")]
    pub credential_helper: bool,
}

fn default_credential_helper() -> bool {
    true
}

impl Default for GitSettings {
    fn default() -> Self {
        Self {
            ssh_key: None,
            https_username: None,
            https_token_file: None,
            credential_helper: default_credential_helper(),
        }
    }
}

/// The user name sent with a token when `https_username` is not set; forges
/// accept any name with a token (GitHub, Gitea, Bitbucket), GitLab wants
/// `oauth2` for OAuth tokens.
pub const DEFAULT_HTTPS_USERNAME: &str = "git";

/// Validated `[git]`: the key file checked, the token read.
#[derive(Clone)]
pub struct GitAuth {
    ssh_key: Option<PathBuf>,
    https: Option<(String, SecretString)>,
    credential_helper: bool,
}

impl Default for GitAuth {
    fn default() -> Self {
        Self {
            ssh_key: None,
            https: None,
            credential_helper: default_credential_helper(),
        }
    }
}

impl fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitAuth")
            .field("ssh_key", &self.ssh_key)
            .field("https_username", &self.https.as_ref().map(|(user, _)| user))
            .field("https_token", &self.https.as_ref().map(|_| "***"))
            .field("credential_helper", &self.credential_helper)
            .finish()
    }
}

impl GitAuth {
    /// Checks `settings`: the key file must be a readable file, the token
    /// file must hold a token (its trailing newline is dropped).
    pub fn from_settings(
        settings: &GitSettings,
        source: &ConfigSource,
    ) -> Result<Self, ConfigError> {
        let ssh_key = match &settings.ssh_key {
            Some(path) => {
                std::fs::File::open(path)
                    .and_then(|file| file.metadata())
                    .map_err(|error| {
                        source.invalid("git.ssh_key", format!("{}: {error}", path.display()))
                    })
                    .and_then(|metadata| {
                        if metadata.is_file() {
                            Ok(())
                        } else {
                            Err(source.invalid(
                                "git.ssh_key",
                                format!("{} is not a file", path.display()),
                            ))
                        }
                    })?;
                Some(path.clone())
            }
            None => None,
        };
        let https = match (&settings.https_token_file, &settings.https_username) {
            (Some(path), username) => {
                let token = read_secret_file(path, "git.https_token_file", source)?;
                let username = username
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HTTPS_USERNAME.to_owned());
                if username.is_empty() || username.contains([':', '\r', '\n']) {
                    return Err(source.invalid(
                        "git.https_username",
                        "must be a non-empty name without ':' or line breaks",
                    ));
                }
                Some((username, token))
            }
            (None, Some(_)) => {
                return Err(source.invalid(
                    "git.https_username",
                    "is sent with a token: set git.https_token_file too",
                ));
            }
            (None, None) => None,
        };
        Ok(Self {
            ssh_key,
            https,
            credential_helper: settings.credential_helper,
        })
    }

    /// Callbacks for one fetch that answer the host's requests for
    /// credentials, each way once (libgit2 asks again after a refusal, and
    /// would loop for ever on the same answer).
    pub fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        let mut tried = Tried::default();
        callbacks.credentials(move |url, username_from_url, allowed| {
            self.credentials(&mut tried, url, username_from_url, allowed)
        });
        callbacks
    }

    fn credentials(
        &self,
        tried: &mut Tried,
        url: &str,
        username_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let ssh_user = username_from_url.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) && !tried.username {
            tried.username = true;
            return Cred::username(ssh_user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if !tried.agent && std::env::var_os("SSH_AUTH_SOCK").is_some() {
                tried.agent = true;
                return Cred::ssh_key_from_agent(ssh_user);
            }
            if let Some(key) = &self.ssh_key
                && !tried.key
            {
                tried.key = true;
                return Cred::ssh_key(ssh_user, None, key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some((user, token)) = &self.https
                && !tried.token
            {
                tried.token = true;
                return Cred::userpass_plaintext(user, token.expose_secret());
            }
            if self.credential_helper && !tried.helper {
                tried.helper = true;
                if let Ok(config) = git2::Config::open_default()
                    && let Ok(cred) = Cred::credential_helper(&config, url, username_from_url)
                {
                    return Ok(cred);
                }
            }
        }
        // An authentication error (GIT_EAUTH), so that callers can tell it
        // from a network failure worth retrying.
        Err(git2::Error::new(
            git2::ErrorCode::Auth,
            git2::ErrorClass::Callback,
            format!(
                "the host refused every credential Warren has for {} (set [git] ssh_key for \
                 ssh, https_token_file for https, or a git credential helper)",
                crate::config::safe_url(url)
            ),
        ))
    }
}

/// The ways of answering already offered during one fetch.
#[derive(Default)]
struct Tried {
    username: bool,
    agent: bool,
    key: bool,
    token: bool,
    helper: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ConfigSource {
        ConfigSource::named("worker.toml")
    }

    fn settings() -> GitSettings {
        GitSettings::default()
    }

    #[test]
    fn a_token_file_gives_one_userpass_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let auth = GitAuth::from_settings(
            &GitSettings {
                https_token_file: Some(token),
                https_username: Some("ci-bot".into()),
                credential_helper: false,
                ..settings()
            },
            &source(),
        )
        .unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"), "{auth:?}");
        let mut tried = Tried::default();
        let url = "https://git.example/team/app.git";
        let first = auth.credentials(&mut tried, url, None, CredentialType::USER_PASS_PLAINTEXT);
        assert!(first.is_ok());
        let again = auth
            .credentials(&mut tried, url, None, CredentialType::USER_PASS_PLAINTEXT)
            .err()
            .expect("no second try of the same token");
        assert!(again.message().contains("https_token_file"), "{again}");
    }

    #[test]
    fn ssh_offers_the_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not really a key").unwrap();
        let auth = GitAuth::from_settings(
            &GitSettings {
                ssh_key: Some(key),
                ..settings()
            },
            &source(),
        )
        .unwrap();
        let mut tried = Tried {
            agent: true,
            ..Tried::default()
        };
        let url = "ssh://git@git.example/app.git";
        assert!(
            auth.credentials(&mut tried, url, Some("git"), CredentialType::USERNAME)
                .is_ok()
        );
        assert!(
            auth.credentials(&mut tried, url, Some("git"), CredentialType::SSH_KEY)
                .is_ok()
        );
        assert!(
            auth.credentials(&mut tried, url, Some("git"), CredentialType::SSH_KEY)
                .is_err()
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let cases = [
            (
                GitSettings {
                    ssh_key: Some(missing.clone()),
                    ..settings()
                },
                "git.ssh_key",
            ),
            (
                GitSettings {
                    ssh_key: Some(dir.path().to_path_buf()),
                    ..settings()
                },
                "git.ssh_key",
            ),
            (
                GitSettings {
                    https_token_file: Some(missing),
                    ..settings()
                },
                "git.https_token_file",
            ),
            (
                GitSettings {
                    https_token_file: Some(empty),
                    ..settings()
                },
                "git.https_token_file",
            ),
            (
                GitSettings {
                    https_username: Some("bot".into()),
                    ..settings()
                },
                "git.https_username",
            ),
        ];
        for (settings, key) in cases {
            let error = GitAuth::from_settings(&settings, &source())
                .expect_err(key)
                .to_string();
            assert!(
                error.contains(key) && error.contains("worker.toml"),
                "{error}"
            );
        }
    }
}
