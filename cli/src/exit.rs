//! The exit codes, in one place: scripts branch on them.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done; for a verdict: passed |
//! | 1 | the verdict is not a pass (failed, timed_out, error, superseded, cancelled), a refused action (409), or another server error |
//! | 2 | usage: bad arguments, nothing found (404, no commit with that prefix), an ambiguous prefix |
//! | 3 | the commit (or the followed job) is still running |
//! | 4 | the dispatcher cannot be reached (refused, timed out, name not found, TLS, connection lost) |

use crate::model::Verdict;

/// How the process ends; see the module doc for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Running = 3,
    Unreachable = 4,
}

impl Exit {
    /// The verdict's code: 0 passed, 3 undecided, 1 anything else (including
    /// a status this client does not know, which is at least not a pass).
    pub fn of_verdict(verdict: &Verdict) -> Self {
        match verdict {
            Verdict::Passed => Self::Success,
            Verdict::Running => Self::Running,
            _ => Self::Failure,
        }
    }

    /// The worst of several jobs' codes: any failure wins, then running.
    pub fn worst(self, other: Self) -> Self {
        fn rank(exit: Exit) -> u8 {
            match exit {
                Exit::Success => 0,
                Exit::Running => 1,
                Exit::Failure => 2,
                Exit::Usage => 3,
                Exit::Unreachable => 4,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_codes() {
        assert_eq!(Exit::of_verdict(&Verdict::Passed).code(), 0);
        assert_eq!(Exit::of_verdict(&Verdict::Failed).code(), 1);
        assert_eq!(Exit::of_verdict(&Verdict::Cancelled).code(), 1);
        assert_eq!(Exit::of_verdict(&Verdict::Other("new".into())).code(), 1);
        assert_eq!(Exit::of_verdict(&Verdict::Running).code(), 3);
    }

    #[test]
    fn a_failure_outranks_running_and_running_outranks_success() {
        assert_eq!(Exit::Success.worst(Exit::Running), Exit::Running);
        assert_eq!(Exit::Running.worst(Exit::Failure), Exit::Failure);
        assert_eq!(Exit::Failure.worst(Exit::Success), Exit::Failure);
    }
}
