//! The user programs (crate `user-programs`), built by `kernel/build.rs` for
//! this target and embedded in the kernel image.

include!(concat!(env!("OUT_DIR"), "/user_programs.rs"));

/// The ELF image of the program called `name`.
pub fn find(name: &str) -> Option<&'static [u8]> {
    PROGRAMS
        .iter()
        .find(|(program, _)| *program == name)
        .map(|(_, image)| *image)
}

/// The names of every embedded program.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().map(|(name, _)| *name)
}
