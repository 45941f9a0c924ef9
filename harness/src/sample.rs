//! A small sample project (a shell calculator with shell tests) and a
//! story of commits through it: passing, failing, fixed, too slow, broken
//! config, fixed again. The demo pushes it; tests use pieces of it.

use crate::git::Change;

/// `warren.toml` of the sample: run every test script, one minute at most.
pub const SPEC: &str = "command = \"sh tests/run.sh\"\ntimeout = \"1m\"\n";

const CALC_ADD: &str = "#!/bin/sh\n# usage: calc.sh add|sub A B\ncase \"$1\" in\n  add) echo $(($2 + $3)) ;;\n  *) echo \"unknown operation: $1\" >&2; exit 2 ;;\nesac\n";
const CALC_ADD_SUB: &str = "#!/bin/sh\n# usage: calc.sh add|sub A B\ncase \"$1\" in\n  add) echo $(($2 + $3)) ;;\n  sub) echo $(($2 - $3)) ;;\n  *) echo \"unknown operation: $1\" >&2; exit 2 ;;\nesac\n";
const RUN: &str = "#!/bin/sh\n# Runs every tests/test_*.sh; fails if any fails. DEMO_SLOW (warren-demo --watch) makes each take a while.\nfailed=0\nfor t in tests/test_*.sh; do\n  [ -n \"$DEMO_SLOW\" ] && sleep 2\n  if sh \"$t\"; then echo \"PASS $t\"; else echo \"FAIL $t\"; failed=1; fi\ndone\nexit $failed\n";
const TEST_ADD: &str = "#!/bin/sh\n[ \"$(sh calc.sh add 2 3)\" = 5 ]\n";
const TEST_SUB: &str = "#!/bin/sh\ngot=$(sh calc.sh sub 5 3)\n[ \"$got\" = 2 ] || { echo \"expected 2, got '$got'\"; exit 1; }\n";
const TEST_SLOW: &str = "#!/bin/sh\necho 'waiting for a server that never answers'\nsleep 30\n";

/// One step of the story: the commit message, what changes, and the
/// verdict Warren should give.
pub struct Step {
    pub summary: &'static str,
    pub changes: Vec<Change<'static>>,
    pub expected: &'static str,
}

/// The demo's commits, in order.
pub fn story() -> Vec<Step> {
    vec![
        Step {
            summary: "Add a calculator with a passing test",
            changes: vec![
                ("warren.toml", Some(SPEC)),
                ("calc.sh", Some(CALC_ADD)),
                ("tests/run.sh", Some(RUN)),
                ("tests/test_add.sh", Some(TEST_ADD)),
            ],
            expected: "passed",
        },
        Step {
            summary: "Add a test for subtraction (not implemented yet)",
            changes: vec![("tests/test_sub.sh", Some(TEST_SUB))],
            expected: "failed",
        },
        Step {
            summary: "Implement subtraction",
            changes: vec![("calc.sh", Some(CALC_ADD_SUB))],
            expected: "passed",
        },
        Step {
            summary: "Add a test that hangs, with a 3 s timeout",
            changes: vec![
                ("tests/test_slow.sh", Some(TEST_SLOW)),
                (
                    "warren.toml",
                    Some("command = \"sh tests/run.sh\"\ntimeout = \"3s\"\n"),
                ),
            ],
            expected: "timed_out",
        },
        Step {
            summary: "Drop the hanging test, but break warren.toml",
            changes: vec![
                ("tests/test_slow.sh", None),
                ("warren.toml", Some("command = [\"sh\", \"tests/run.sh\"\n")),
            ],
            expected: "error",
        },
        Step {
            summary: "Fix warren.toml",
            changes: vec![("warren.toml", Some(SPEC))],
            expected: "passed",
        },
    ]
}
