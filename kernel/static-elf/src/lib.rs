//! A strict reader of statically linked ELF64 executables (System V gABI,
//! "ELF Header" and "Program Header" chapters), for the user programs the
//! kernel embeds.
//!
//! Every field a loader relies on is checked against the [`Target`] (the
//! machine and the address range the image may occupy); anything unexpected
//! is an [`ElfError`], never a panic, so a malformed image can only fail its
//! load. Nothing here allocates beyond the segment list.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::ops::Range;

/// Pages are 4 KiB: two segments may not share one (they may need different
/// permissions).
pub const PAGE_SIZE: u64 = 4096;
/// e_machine values (gABI, "Machine" table).
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

/// gABI e_ident: magic, class, data encoding, version.
const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
/// e_type: an executable (not relocatable, not shared).
const ET_EXEC: u16 = 2;
const ELF_HEADER_SIZE: usize = 64;
const PROGRAM_HEADER_SIZE: usize = 56;
/// More segments than any of our programs has (code, rodata, data, stack note).
const MAX_PROGRAM_HEADERS: usize = 16;
/// p_type values.
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
/// p_flags.
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the ELF header.
    Truncated,
    BadMagic,
    /// Not ELF64, not little-endian, or an unknown ELF version.
    WrongFormat,
    /// Built for another architecture (the e_machine value).
    WrongMachine(u16),
    /// Not a static executable (the e_type value).
    NotExecutable(u16),
    /// e_ehsize or e_phentsize differs from ELF64's.
    BadHeaderSize,
    /// The program header table lies (partly) outside the file, or is too long.
    BadProgramHeaderTable,
    /// A segment's file bytes lie outside the file.
    SegmentOutsideFile,
    /// p_filesz > p_memsz.
    FileSizeExceedsMemorySize,
    /// A segment is outside the image part of the user region.
    SegmentOutsideImage,
    /// Two segments share a page.
    SegmentsOverlap,
    /// A segment both writable and executable.
    WritableAndExecutable,
    /// Needs a dynamic linker or thread-local storage.
    Unsupported(u32),
    /// The entry point is not in an executable segment.
    BadEntry,
    NoLoadableSegment,
}

/// What the image must fit.
#[derive(Clone, Debug)]
pub struct Target {
    /// The e_machine value the image must carry.
    pub machine: u16,
    /// Every loadable byte must lie in this range.
    pub region: Range<u64>,
}

/// What a segment's pages allow (p_flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

/// A loadable segment: `data` is copied to `vaddr`, the rest of `mem_size` is zero.
#[derive(Debug)]
pub struct Segment<'a> {
    pub vaddr: u64,
    pub mem_size: u64,
    pub data: &'a [u8],
    pub permissions: Permissions,
}

impl Segment<'_> {
    /// The pages the segment touches, as [first, end) page addresses.
    pub fn pages(&self) -> core::ops::Range<u64> {
        let first = self.vaddr & !(PAGE_SIZE - 1);
        // Checked in `parse`: vaddr + mem_size does not overflow.
        let end = (self.vaddr + self.mem_size).next_multiple_of(PAGE_SIZE);
        first..end
    }
}

/// A validated executable.
#[derive(Debug)]
pub struct Image<'a> {
    pub entry: u64,
    pub segments: Vec<Segment<'a>>,
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// Checks `file` against `target` and returns its entry point and loadable
/// segments.
pub fn parse<'a>(file: &'a [u8], target: &Target) -> Result<Image<'a>, ElfError> {
    if file.len() < ELF_HEADER_SIZE {
        return Err(ElfError::Truncated);
    }
    if file[..4] != ELF_MAGIC {
        return Err(ElfError::BadMagic);
    }
    if file[4] != ELFCLASS64 || file[5] != ELFDATA2LSB || file[6] != EV_CURRENT {
        return Err(ElfError::WrongFormat);
    }
    // The header is 64 bytes long (checked above), so these reads succeed.
    let field16 = |offset| u16_at(file, offset).ok_or(ElfError::Truncated);
    let e_type = field16(16)?;
    let e_machine = field16(18)?;
    let e_version = u32_at(file, 20).ok_or(ElfError::Truncated)?;
    let e_entry = u64_at(file, 24).ok_or(ElfError::Truncated)?;
    let e_phoff = u64_at(file, 32).ok_or(ElfError::Truncated)?;
    let e_ehsize = field16(52)?;
    let e_phentsize = field16(54)?;
    let e_phnum = usize::from(field16(56)?);
    if e_version != u32::from(EV_CURRENT) {
        return Err(ElfError::WrongFormat);
    }
    if e_machine != target.machine {
        return Err(ElfError::WrongMachine(e_machine));
    }
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(e_type));
    }
    if usize::from(e_ehsize) != ELF_HEADER_SIZE || usize::from(e_phentsize) != PROGRAM_HEADER_SIZE {
        return Err(ElfError::BadHeaderSize);
    }
    if e_phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::BadProgramHeaderTable);
    }
    let table_start = usize::try_from(e_phoff).map_err(|_| ElfError::BadProgramHeaderTable)?;
    let table = table_start
        .checked_add(e_phnum * PROGRAM_HEADER_SIZE)
        .and_then(|end| file.get(table_start..end))
        .ok_or(ElfError::BadProgramHeaderTable)?;

    let mut segments: Vec<Segment> = Vec::new();
    for header in table.chunks_exact(PROGRAM_HEADER_SIZE) {
        let word32 = |offset| u32_at(header, offset).ok_or(ElfError::BadProgramHeaderTable);
        let word64 = |offset| u64_at(header, offset).ok_or(ElfError::BadProgramHeaderTable);
        let p_type = word32(0)?;
        match p_type {
            PT_LOAD => {}
            PT_DYNAMIC | PT_INTERP | PT_TLS => return Err(ElfError::Unsupported(p_type)),
            // Notes, GNU_STACK and the like: nothing to load.
            _ => continue,
        }
        let flags = word32(4)?;
        let (offset, vaddr, file_size, mem_size) =
            (word64(8)?, word64(16)?, word64(32)?, word64(40)?);
        if file_size > mem_size {
            return Err(ElfError::FileSizeExceedsMemorySize);
        }
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(file_size).ok())
            .and_then(|(start, len)| file.get(start..start.checked_add(len)?))
            .ok_or(ElfError::SegmentOutsideFile)?;
        let end = vaddr
            .checked_add(mem_size)
            .ok_or(ElfError::SegmentOutsideImage)?;
        if vaddr < target.region.start || end > target.region.end {
            return Err(ElfError::SegmentOutsideImage);
        }
        if mem_size == 0 {
            continue;
        }
        if flags & PF_W != 0 && flags & PF_X != 0 {
            return Err(ElfError::WritableAndExecutable);
        }
        let segment = Segment {
            vaddr,
            mem_size,
            data,
            permissions: Permissions {
                read: flags & PF_R != 0,
                write: flags & PF_W != 0,
                execute: flags & PF_X != 0,
            },
        };
        let pages = segment.pages();
        if segments
            .iter()
            .any(|other| other.pages().start < pages.end && pages.start < other.pages().end)
        {
            return Err(ElfError::SegmentsOverlap);
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegment);
    }
    let entry_ok = segments.iter().any(|segment| {
        segment.permissions.execute
            && (segment.vaddr..segment.vaddr + segment.mem_size).contains(&e_entry)
    });
    if !entry_ok {
        return Err(ElfError::BadEntry);
    }
    Ok(Image {
        entry: e_entry,
        segments,
    })
}
