//! The reader against hand-built images: what it accepts, each error it
//! reports, and (property tests) that no corruption of a valid image makes it
//! panic or accept something a loader could not safely load.

use proptest::prelude::*;
use static_elf::{EM_AARCH64, EM_X86_64, ElfError, PAGE_SIZE, Permissions, Target, parse};

const BASE: u64 = 0x80_0000_0000;
const TARGET: Target = Target {
    machine: EM_X86_64,
    region: BASE..BASE + (1 << 30),
};
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// One program header to write: (p_type, p_flags, vaddr, data, mem_size).
struct Header {
    kind: u32,
    flags: u32,
    vaddr: u64,
    data: Vec<u8>,
    mem_size: u64,
}

fn load(flags: u32, vaddr: u64, data: &[u8], mem_size: u64) -> Header {
    Header {
        kind: PT_LOAD,
        flags,
        vaddr,
        data: data.to_vec(),
        mem_size,
    }
}

/// Lays out an ELF64 executable by hand from the gABI field offsets.
fn build(machine: u16, entry: u64, headers: &[Header]) -> Vec<u8> {
    let table = 64;
    let mut data_at = table + 56 * headers.len();
    let mut file = vec![0u8; data_at];
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2; // ELFCLASS64
    file[5] = 1; // ELFDATA2LSB
    file[6] = 1; // EV_CURRENT
    file[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    file[18..20].copy_from_slice(&machine.to_le_bytes());
    file[20..24].copy_from_slice(&1u32.to_le_bytes());
    file[24..32].copy_from_slice(&entry.to_le_bytes());
    file[32..40].copy_from_slice(&(table as u64).to_le_bytes());
    file[52..54].copy_from_slice(&64u16.to_le_bytes());
    file[54..56].copy_from_slice(&56u16.to_le_bytes());
    file[56..58].copy_from_slice(&(headers.len() as u16).to_le_bytes());
    for (index, header) in headers.iter().enumerate() {
        let at = table + 56 * index;
        file[at..at + 4].copy_from_slice(&header.kind.to_le_bytes());
        file[at + 4..at + 8].copy_from_slice(&header.flags.to_le_bytes());
        file[at + 8..at + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
        file[at + 16..at + 24].copy_from_slice(&header.vaddr.to_le_bytes());
        file[at + 32..at + 40].copy_from_slice(&(header.data.len() as u64).to_le_bytes());
        file[at + 40..at + 48].copy_from_slice(&header.mem_size.to_le_bytes());
        data_at += header.data.len();
    }
    for header in headers {
        file.extend_from_slice(&header.data);
    }
    file
}

/// Code, read-only data and data+bss, like user/link.ld produces.
fn program() -> Vec<u8> {
    build(
        EM_X86_64,
        BASE + 4,
        &[
            load(PF_R | PF_X, BASE, &[0x90; 100], 100),
            Header {
                kind: PT_NOTE,
                flags: PF_R,
                vaddr: 0,
                data: vec![1; 8],
                mem_size: 8,
            },
            load(PF_R, BASE + PAGE_SIZE, b"hello", 5),
            load(PF_R | PF_W, BASE + 2 * PAGE_SIZE, &[7; 16], 3 * PAGE_SIZE),
        ],
    )
}

#[test]
fn a_well_formed_program_yields_its_segments() {
    let file = program();
    let image = parse(&file, &TARGET).expect("valid image");
    assert_eq!(image.entry, BASE + 4);
    assert_eq!(image.segments.len(), 3);
    let code = &image.segments[0];
    assert_eq!(
        (code.vaddr, code.mem_size, code.data.len()),
        (BASE, 100, 100)
    );
    assert_eq!(
        code.permissions,
        Permissions {
            read: true,
            write: false,
            execute: true
        }
    );
    assert_eq!(image.segments[1].data, b"hello");
    let data = &image.segments[2];
    assert_eq!(data.mem_size, 3 * PAGE_SIZE);
    assert_eq!(data.data, &[7; 16]);
    assert_eq!(data.pages(), BASE + 2 * PAGE_SIZE..BASE + 5 * PAGE_SIZE);
}

#[test]
fn each_malformation_has_its_error() {
    let valid = program();
    let patched = |offset: usize, bytes: &[u8]| {
        let mut file = valid.clone();
        file[offset..offset + bytes.len()].copy_from_slice(bytes);
        file
    };
    let first = 64; // first program header
    let cases: Vec<(&str, Vec<u8>, ElfError)> = vec![
        ("empty", Vec::new(), ElfError::Truncated),
        ("header cut", valid[..63].to_vec(), ElfError::Truncated),
        ("magic", patched(1, b"X"), ElfError::BadMagic),
        ("class", patched(4, &[1]), ElfError::WrongFormat),
        ("big endian", patched(5, &[2]), ElfError::WrongFormat),
        ("ident version", patched(6, &[0]), ElfError::WrongFormat),
        ("e_version", patched(20, &[2]), ElfError::WrongFormat),
        (
            "machine",
            patched(18, &EM_AARCH64.to_le_bytes()),
            ElfError::WrongMachine(EM_AARCH64),
        ),
        (
            "relocatable",
            patched(16, &1u16.to_le_bytes()),
            ElfError::NotExecutable(1),
        ),
        (
            "ehsize",
            patched(52, &52u16.to_le_bytes()),
            ElfError::BadHeaderSize,
        ),
        (
            "phentsize",
            patched(54, &32u16.to_le_bytes()),
            ElfError::BadHeaderSize,
        ),
        (
            "phnum too large",
            patched(56, &17u16.to_le_bytes()),
            ElfError::BadProgramHeaderTable,
        ),
        (
            "phnum past end",
            patched(56, &16u16.to_le_bytes()),
            ElfError::BadProgramHeaderTable,
        ),
        (
            "phoff huge",
            patched(32, &u64::MAX.to_le_bytes()),
            ElfError::BadProgramHeaderTable,
        ),
        (
            "no segments",
            patched(56, &0u16.to_le_bytes()),
            ElfError::NoLoadableSegment,
        ),
        (
            "dynamic",
            patched(first, &2u32.to_le_bytes()),
            ElfError::Unsupported(2),
        ),
        (
            "interpreter",
            patched(first, &3u32.to_le_bytes()),
            ElfError::Unsupported(3),
        ),
        (
            "tls",
            patched(first, &7u32.to_le_bytes()),
            ElfError::Unsupported(7),
        ),
        (
            "offset past end",
            patched(first + 8, &(valid.len() as u64).to_le_bytes()),
            ElfError::SegmentOutsideFile,
        ),
        (
            "offset wraps",
            patched(first + 8, &u64::MAX.to_le_bytes()),
            ElfError::SegmentOutsideFile,
        ),
        (
            "filesz > memsz",
            patched(first + 40, &50u64.to_le_bytes()),
            ElfError::FileSizeExceedsMemorySize,
        ),
        (
            "below the region",
            patched(first + 16, &(BASE - PAGE_SIZE).to_le_bytes()),
            ElfError::SegmentOutsideImage,
        ),
        (
            "past the region",
            patched(first + 16, &(BASE + (1 << 30) - 50).to_le_bytes()),
            ElfError::SegmentOutsideImage,
        ),
        (
            "wraps",
            patched(first + 16, &(u64::MAX - 10).to_le_bytes()),
            ElfError::SegmentOutsideImage,
        ),
        (
            "shared page",
            patched(first + 56 * 2 + 16, &(BASE + 200).to_le_bytes()),
            ElfError::SegmentsOverlap,
        ),
        (
            "writable code",
            patched(first + 4, &(PF_R | PF_W | PF_X).to_le_bytes()),
            ElfError::WritableAndExecutable,
        ),
        (
            "entry in data",
            patched(24, &(BASE + PAGE_SIZE).to_le_bytes()),
            ElfError::BadEntry,
        ),
        (
            "entry past code",
            patched(24, &(BASE + 100).to_le_bytes()),
            ElfError::BadEntry,
        ),
    ];
    for (what, file, expected) in cases {
        assert_eq!(parse(&file, &TARGET).map(|_| ()), Err(expected), "{what}");
    }
}

/// What any accepted image must satisfy for a loader to be safe.
fn check_invariants(file: &[u8]) {
    let Ok(image) = parse(file, &TARGET) else {
        return;
    };
    assert!(!image.segments.is_empty());
    for segment in &image.segments {
        let end = segment
            .vaddr
            .checked_add(segment.mem_size)
            .expect("no wrap");
        assert!(TARGET.region.start <= segment.vaddr && end <= TARGET.region.end);
        assert!(segment.data.len() as u64 <= segment.mem_size);
        assert!(!(segment.permissions.write && segment.permissions.execute));
        let pages = segment.pages();
        assert!(TARGET.region.start <= pages.start && pages.end <= TARGET.region.end);
    }
    for (i, a) in image.segments.iter().enumerate() {
        for b in &image.segments[i + 1..] {
            assert!(a.pages().end <= b.pages().start || b.pages().end <= a.pages().start);
        }
    }
    assert!(
        image.segments.iter().any(
            |s| s.permissions.execute && (s.vaddr..s.vaddr + s.mem_size).contains(&image.entry)
        )
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_invariants(&bytes);
    }

    #[test]
    fn corrupted_programs_never_panic_or_break_the_rules(
        edits in proptest::collection::vec((0usize..300, any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..400),
    ) {
        let mut file = program();
        for (offset, byte) in edits {
            if let Some(slot) = file.get_mut(offset) {
                *slot = byte;
            }
        }
        if let Some(cut) = cut {
            file.truncate(cut);
        }
        check_invariants(&file);
    }

    #[test]
    fn segments_anywhere_are_accepted_only_inside_the_region(
        page in 0u64..(1 << 20),
        pages in 1u64..8,
        offset_in_page in 0u64..PAGE_SIZE,
    ) {
        let vaddr = BASE - (1 << 19) * PAGE_SIZE + page * PAGE_SIZE + offset_in_page;
        let mem_size = pages * PAGE_SIZE;
        let file = build(EM_X86_64, vaddr, &[load(PF_R | PF_X, vaddr, &[1; 8], mem_size)]);
        let inside = vaddr >= TARGET.region.start && vaddr + mem_size <= TARGET.region.end;
        prop_assert_eq!(parse(&file, &TARGET).is_ok(), inside);
    }
}
