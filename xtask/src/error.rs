//! What can go wrong in `cargo xtask`.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The command line was wrong; the usage text follows.
    Usage(String),
    /// Something needed is missing and could not be installed here.
    Setup(String),
    /// A command we ran failed.
    Command { command: String, status: String },
    /// Tests, lints or benches ran and some failed; the details were printed.
    Failed(String),
    /// Anything else that stops us (I/O, cargo metadata, ...).
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(why) => write!(f, "{why}"),
            Error::Setup(why) => write!(f, "setup: {why}"),
            Error::Command { command, status } => write!(f, "`{command}` failed ({status})"),
            Error::Failed(what) => write!(f, "{what}"),
            Error::Other(why) => write!(f, "{why}"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Other(error.to_string())
    }
}
