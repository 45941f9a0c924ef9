//! Putting a job's suite files into its command: `{files}` and `{file}`.
//!
//! The command comes from the commit's `warren.toml`; the files come from
//! the commit's tree and are already [`SuitePath`]s (relative, no `..`, no
//! control characters, never starting with `-`). They reach the command in
//! one of two ways, and never as unquoted text:
//!
//! - a list command (`["pytest", "{files}"]`): an element that is exactly
//!   `{files}` becomes one argument per file, `{file}` one argument; an
//!   element with a placeholder inside other text is refused, because the
//!   file would not be one argument of its own any more;
//! - a shell command (`"pytest {files}"`): each file becomes one word quoted
//!   for `sh` (`'it'\''s'`), separated by spaces.
//!
//! `{files}` runs the command once with all the files of the run, `{file}`
//! once per file ([`Placeholder`]). The files also reach the command as
//! `WARREN_FILES` ([`files_variable`]), placeholder or not.

use std::ffi::OsString;
use warren_common::ids::SuitePath;
use warren_common::messages::TestCommand;

/// Replaced by all the files of a run.
pub(crate) const FILES: &str = "{files}";
/// Replaced by one file; the command runs once per file.
pub(crate) const FILE: &str = "{file}";

/// Linux's limit for one argument or one `NAME=value` environment string,
/// in bytes (`MAX_ARG_STRLEN`, 32 pages): a longer one makes `exec` fail
/// with E2BIG, whatever the total size.
pub(crate) const MAX_ARG_BYTES: usize = 32 * 4096;

/// How the command uses the job's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholder {
    /// No placeholder: the command runs once as written (the files are in
    /// `WARREN_FILES`).
    None,
    /// `{files}`: the command runs once with all the files.
    AllFiles,
    /// `{file}`: the command runs once per file, one after the other.
    EachFile,
}

/// The command cannot take the job's files. The job gets status `error`
/// with this text as its message, before anything runs; the fix is in the
/// commit's `warren.toml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubstituteError {
    /// Both placeholders: it is not clear how often to run the command.
    #[error("the command uses both {FILE} and {FILES}; use one of them")]
    Both,
    /// A list element with a placeholder among other text.
    #[error(
        "element {index} of the command, {element:?}, has {placeholder} inside other text; \
         in a command written as a list, {placeholder} must be an element of its own"
    )]
    Embedded {
        /// Position in the list (0 is the program).
        index: usize,
        /// The element, as written.
        element: String,
        /// Which placeholder.
        placeholder: &'static str,
    },
    /// `{file}` with no files: there is nothing to run the command for.
    #[error("the command runs once per file ({FILE}) but the job lists no files")]
    NoFiles,
    /// A list command whose every element was `{files}`, with no files.
    #[error("the command is empty once {FILES} is replaced: the job lists no files")]
    Empty,
}

/// Which placeholder `command` uses; refuses the ones it cannot take.
pub(crate) fn placeholder(command: &TestCommand) -> Result<Placeholder, SubstituteError> {
    let parts: Vec<&str> = match command {
        TestCommand::Shell(script) => vec![script.as_str()],
        TestCommand::Argv(argv) => argv.iter().map(String::as_str).collect(),
    };
    let has = |placeholder: &str| parts.iter().any(|part| part.contains(placeholder));
    let found = match (has(FILES), has(FILE)) {
        (true, true) => return Err(SubstituteError::Both),
        (true, false) => Placeholder::AllFiles,
        (false, true) => Placeholder::EachFile,
        (false, false) => Placeholder::None,
    };
    if let TestCommand::Argv(argv) = command {
        for (index, element) in argv.iter().enumerate() {
            for placeholder in [FILES, FILE] {
                if element.contains(placeholder) && element != placeholder {
                    return Err(SubstituteError::Embedded {
                        index,
                        element: element.clone(),
                        placeholder,
                    });
                }
            }
        }
    }
    Ok(found)
}

/// The program and arguments of one run of `command` over `files` (all of
/// a `{files}` run, the one of a `{file}` run; ignored without a
/// placeholder). `command` must have passed [`placeholder`].
pub(crate) fn command_line(
    command: &TestCommand,
    files: &[SuitePath],
) -> Result<(OsString, Vec<OsString>), SubstituteError> {
    match command {
        TestCommand::Shell(script) => {
            let words = files
                .iter()
                .map(|file| shell_quote(file.as_str()))
                .collect::<Vec<_>>()
                .join(" ");
            let script = script.replace(FILES, &words).replace(FILE, &words);
            Ok(("sh".into(), vec!["-c".into(), script.into()]))
        }
        TestCommand::Argv(argv) => {
            let mut parts: Vec<OsString> = Vec::with_capacity(argv.len() + files.len());
            for element in argv {
                if element == FILES || element == FILE {
                    for file in files {
                        // A file as the program (`["{file}"]`: run each
                        // test script) is the checkout's file, never a
                        // program of the same name found in PATH.
                        if parts.is_empty() && !file.as_str().contains('/') {
                            parts.push(format!("./{file}").into());
                        } else {
                            parts.push(file.as_str().into());
                        }
                    }
                } else {
                    parts.push(OsString::from(element));
                }
            }
            let mut parts = parts.into_iter();
            let program = parts.next().ok_or(SubstituteError::Empty)?;
            Ok((program, parts.collect()))
        }
    }
}

/// `text` as one word for `sh`: in single quotes, where nothing is special
/// but the quote itself, which becomes `'\''` (end quote, escaped quote,
/// quote again).
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The value of `WARREN_FILES`: the files, one per line (a suite path has
/// no control characters, so no file contains a newline). `Err` with a
/// sentence for the job's output when the value is too long for one
/// environment variable (Linux refuses to start any program then); the
/// command runs without the variable.
pub(crate) fn files_variable(files: &[SuitePath]) -> Result<String, String> {
    let value = files
        .iter()
        .map(SuitePath::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    // `WARREN_FILES=` and the terminating NUL count too.
    if value.len() + "WARREN_FILES=".len() + 1 > MAX_ARG_BYTES {
        return Err(format!(
            "[warren: WARREN_FILES is not set: the {} files take {} bytes, more than Linux allows \
             for one environment variable ({MAX_ARG_BYTES}); use {FILES} in an argument list, \
             or {FILE}, or more shards]",
            files.len(),
            value.len()
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<SuitePath> {
        list.iter().map(|p| SuitePath::parse(p).unwrap()).collect()
    }

    fn argv(list: &[&str]) -> TestCommand {
        TestCommand::Argv(list.iter().map(|s| (*s).to_owned()).collect())
    }

    fn strings(program: OsString, args: Vec<OsString>) -> Vec<String> {
        std::iter::once(program)
            .chain(args)
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_placeholder_decides_how_often_the_command_runs() {
        let cases = [
            (TestCommand::Shell("make test".into()), Placeholder::None),
            (
                TestCommand::Shell("pytest {files}".into()),
                Placeholder::AllFiles,
            ),
            (
                TestCommand::Shell("pytest {file} -q".into()),
                Placeholder::EachFile,
            ),
            (argv(&["pytest", "{files}"]), Placeholder::AllFiles),
            (argv(&["{file}"]), Placeholder::EachFile),
            (argv(&["cargo", "test"]), Placeholder::None),
        ];
        for (command, expected) in cases {
            assert_eq!(placeholder(&command), Ok(expected), "{command}");
        }
    }

    #[test]
    fn a_placeholder_inside_a_list_element_is_refused() {
        let err = placeholder(&argv(&["pytest", "--files={files}"])).unwrap_err();
        assert_eq!(
            err,
            SubstituteError::Embedded {
                index: 1,
                element: "--files={files}".into(),
                placeholder: FILES
            }
        );
        assert!(
            err.to_string().contains("must be an element of its own"),
            "{err}"
        );
        assert!(matches!(
            placeholder(&argv(&["run", "x{file}"])),
            Err(SubstituteError::Embedded {
                placeholder: FILE,
                ..
            })
        ));
        // In a shell script the words are quoted wherever they go.
        assert_eq!(
            placeholder(&TestCommand::Shell("pytest --x={files}".into())),
            Ok(Placeholder::AllFiles)
        );
    }

    #[test]
    fn both_placeholders_are_refused() {
        assert_eq!(
            placeholder(&TestCommand::Shell("a {file} {files}".into())),
            Err(SubstituteError::Both)
        );
        assert_eq!(
            placeholder(&argv(&["a", "{file}", "{files}"])),
            Err(SubstituteError::Both)
        );
    }

    #[test]
    fn list_commands_get_one_argument_per_file_whatever_it_contains() {
        let files = paths(&["tests/a b.py", "tests/it's \"q\".py", "tests/$(rm -rf).py"]);
        let (program, args) =
            command_line(&argv(&["pytest", "-q", "{files}", "-x"]), &files).unwrap();
        assert_eq!(
            strings(program, args),
            [
                "pytest",
                "-q",
                "tests/a b.py",
                "tests/it's \"q\".py",
                "tests/$(rm -rf).py",
                "-x"
            ]
        );
        let (program, args) = command_line(&argv(&["{file}"]), &files[..1]).unwrap();
        assert_eq!(strings(program, args), ["tests/a b.py"]);
        // A file as the program is the checkout's, not one in PATH.
        let (program, args) = command_line(&argv(&["{files}"]), &paths(&["ls", "rm"])).unwrap();
        assert_eq!(strings(program, args), ["./ls", "rm"]);
        assert_eq!(
            command_line(&argv(&["{files}"]), &[]),
            Err(SubstituteError::Empty)
        );
    }

    #[test]
    fn shell_commands_get_one_quoted_word_per_file() {
        let files = paths(&["tests/a b.py", "tests/it's.py", "tests/$(touch x);`y`.py"]);
        let command = TestCommand::Shell("printf '[%s]\\n' {files}".into());
        let (program, args) = command_line(&command, &files).unwrap();
        let script = args[1].to_str().unwrap();
        assert_eq!(program, "sh");
        assert_eq!(
            script,
            r#"printf '[%s]\n' 'tests/a b.py' 'tests/it'\''s.py' 'tests/$(touch x);`y`.py'"#
        );
        // What sh makes of it: each file exactly, as one argument.
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "[tests/a b.py]\n[tests/it's.py]\n[tests/$(touch x);`y`.py]\n"
        );
        assert!(!dir.path().join("x").exists(), "nothing was executed");
        // No files: the placeholder disappears.
        let (_, args) = command_line(&command, &[]).unwrap();
        assert_eq!(args[1], "printf '[%s]\\n' ");
    }

    #[test]
    fn a_path_that_looks_like_an_option_cannot_reach_a_command() {
        // The type refuses it before any substitution could happen.
        assert!(SuitePath::parse("-rf").is_err());
        assert!(SuitePath::parse("--collect-only").is_err());
    }

    #[test]
    fn warren_files_lists_the_files_one_per_line_within_linuxs_limit() {
        assert_eq!(
            files_variable(&paths(&["a.py", "b c.py"])).unwrap(),
            "a.py\nb c.py"
        );
        assert_eq!(files_variable(&[]).unwrap(), "");
        let many: Vec<SuitePath> = (0..5000)
            .map(|i| SuitePath::parse(&format!("tests/some/deep/folder/test_{i:05}.py")).unwrap())
            .collect();
        let note = files_variable(&many).unwrap_err();
        assert!(note.contains("5000 files"), "{note}");
    }
}
