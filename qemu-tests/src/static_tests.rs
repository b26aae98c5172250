//! The in-kernel tests read out of the kernel ELF, without booting it.
//!
//! The registry is the kernel's `tests::ALL`, a `&[&[Test]]` whose `Test` is
//! `repr(C)` (`name: &str`, then `run`). The kernel is linked position
//! dependent, so every pointer in it is the link address of what it points
//! at: the walk reads the slice, each group's slice, and each test's name
//! from the ELF's sections. Anything that does not look as expected (the
//! symbol missing, a pointer outside the sections, a name that is no test
//! name) gives `None`, and the caller boots the kernel in list mode instead.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// A `Test` is a name (pointer, length) and a function pointer.
const TEST_BYTES: u64 = 24;
/// A slice reference is a pointer and a length.
const SLICE_BYTES: u64 = 16;

/// The names of the kernel's tests in run order, read from `elf`; `None`
/// when the registry cannot be read this way.
pub fn in_kernel_tests(elf: &Path) -> Option<Vec<String>> {
    let data = std::fs::read(elf).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if !file.is_little_endian() || !file.is_64() {
        return None;
    }
    let registry = file.symbols().find(|symbol| {
        symbol
            .name()
            .is_ok_and(|name| addr2line::demangle_auto(name.into(), None) == "kernel::tests::ALL")
    })?;
    let read = |address: u64, len: u64| -> Option<&[u8]> {
        file.sections().find_map(|section| {
            let start = section.address();
            let offset = address.checked_sub(start)?;
            if offset.checked_add(len)? > section.size() {
                return None;
            }
            let bytes = section.data().ok()?;
            bytes.get(offset as usize..(offset + len) as usize)
        })
    };
    let word = |address: u64| -> Option<u64> {
        Some(u64::from_le_bytes(read(address, 8)?.try_into().ok()?))
    };
    let slice = |address: u64| Some((word(address)?, word(address + 8)?));
    let (groups, group_count) = slice(registry.address())?;
    let mut names = Vec::new();
    for group in 0..group_count {
        let (tests, test_count) = slice(groups + group * SLICE_BYTES)?;
        for test in 0..test_count {
            let (name, len) = slice(tests + test * TEST_BYTES)?;
            let name = std::str::from_utf8(read(name, len)?).ok()?;
            let plausible = !name.is_empty()
                && name.contains("::")
                && name.bytes().all(|byte| {
                    byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_:".contains(&byte)
                });
            if !plausible {
                return None;
            }
            names.push(name.to_string());
        }
    }
    (!names.is_empty()).then_some(names)
}
