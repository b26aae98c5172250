//! In-memory translation structures (VT-d 3.4 chapter 9): root and context
//! entries in legacy and scalable mode, PASID directory and table entries.
//!
//! Entries are plain `repr(C)` words built by constructors; the driver writes
//! them into zeroed, page-aligned DMA memory with volatile stores.

use core::mem::size_of;

/// Physical-address bits 63:12 of a 4 KiB-aligned pointer field.
const ADDRESS_MASK: u64 = !0xFFF;

/// The entry's Present bit, bit 0 of its first word (§9.1-§9.6).
const PRESENT: u64 = 1 << 0;

/// VT-d 3.4 §9.1 Root Entry (legacy mode), one per bus in a 4 KiB root table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry {
    /// P (0), CTP (63:12): the bus's context table.
    pub low: u64,
    /// Reserved.
    pub high: u64,
}
const _: () = assert!(size_of::<RootEntry>() == 16);

impl RootEntry {
    /// A present root entry naming `context_table`.
    pub fn new(context_table: u64) -> Self {
        Self {
            low: (context_table & ADDRESS_MASK) | PRESENT,
            high: 0,
        }
    }
}

/// VT-d 3.4 §9.2 Scalable-Mode Root Entry: separate context tables for
/// devfn 0-127 (lower) and 128-255 (upper).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalableRootEntry {
    /// LP (0), LCTP (63:12).
    pub low: u64,
    /// UP (64), UCTP (127:76).
    pub high: u64,
}
const _: () = assert!(size_of::<ScalableRootEntry>() == 16);

impl ScalableRootEntry {
    /// A present scalable-mode root entry: `lower` holds devfn 0-127, `upper` devfn 128-255 (0: not present).
    pub fn new(lower: u64, upper: u64) -> Self {
        Self {
            low: (lower & ADDRESS_MASK) | PRESENT,
            high: (upper & ADDRESS_MASK) | PRESENT,
        }
    }
}

/// VT-d 3.4 §9.3 context-entry TT (3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// Untranslated requests walk the second-stage table.
    Translated = 0b00,
    /// Untranslated requests pass through (needs ECAP.PT).
    PassThrough = 0b10,
}

/// VT-d 3.4 §9.3 Context Entry (legacy mode), 256 per 4 KiB table (one per devfn).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    /// P (0), FPD (1), TT (3:2), SLPTPTR (63:12).
    pub low: u64,
    /// AW (66:64), DID (87:72).
    pub high: u64,
}
const _: () = assert!(size_of::<ContextEntry>() == 16);

impl ContextEntry {
    /// A present entry. `address_width` is the AW code: 1 = 39-bit 3-level,
    /// 2 = 48-bit 4-level (§9.3, matching CAP.SAGAW bit positions).
    pub fn new(tt: TranslationType, table: u64, address_width: u8, did: u16) -> Self {
        Self {
            low: (table & ADDRESS_MASK) | ((tt as u64) << 2) | PRESENT,
            high: u64::from(address_width & 0x7) | (u64::from(did) << 8),
        }
    }

    /// The present bit (P, bit 0).
    pub fn is_present(&self) -> bool {
        self.low & PRESENT != 0
    }

    /// DID (87:72).
    pub fn did(&self) -> u16 {
        (self.high >> 8) as u16
    }
}

/// VT-d 3.4 §9.4 Scalable-Mode Context Entry, 128 per 4 KiB table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalableContextEntry {
    /// P (0), FPD (1), DTE (2), PASIDE (3), PRE (4), PDTS (11:9), PASIDDIRPTR (63:12).
    pub words: [u64; 4],
}
const _: () = assert!(size_of::<ScalableContextEntry>() == 32);

impl ScalableContextEntry {
    /// A present entry naming a PASID directory of 2^(7 + `pdts`) entries;
    /// RID_PASID (word 1, 19:0) stays 0 so untagged DMA uses PASID 0.
    pub fn new(pasid_directory: u64, pdts: u8) -> Self {
        Self {
            words: [
                (pasid_directory & ADDRESS_MASK) | (u64::from(pdts & 0x7) << 9) | PRESENT,
                0,
                0,
                0,
            ],
        }
    }

    /// The present bit (P, bit 0).
    pub fn is_present(&self) -> bool {
        self.words[0] & PRESENT != 0
    }
}

/// VT-d 3.4 §9.5 Scalable-Mode PASID Directory Entry: P (0), FPD (1), SMPTBLPTR (63:12).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidDirectoryEntry(pub u64);
const _: () = assert!(size_of::<PasidDirectoryEntry>() == 8);

impl PasidDirectoryEntry {
    /// A present directory entry naming `pasid_table`.
    pub fn new(pasid_table: u64) -> Self {
        Self((pasid_table & ADDRESS_MASK) | PRESENT)
    }
}

/// VT-d 3.4 §9.6 PASID-entry PGTT (8:6): which stage translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidTranslation {
    /// First-stage tables only.
    FirstStage = 1,
    /// Second-stage tables only.
    SecondStage = 2,
    /// No translation.
    PassThrough = 4,
}

/// VT-d 3.4 §9.6 Scalable-Mode PASID Table Entry, 64 per 4 KiB table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidEntry {
    /// word 0: P (0), FPD (1), AW (4:2), PGTT (8:6), SLPTPTR (63:12);
    /// word 1: DID (79:64), PWSNP (87), PGSNP (88); word 2: SRE (128), FLPM
    /// (131:130), FLPTPTR (191:140).
    pub words: [u64; 8],
}
const _: () = assert!(size_of::<PasidEntry>() == 64);

impl PasidEntry {
    /// PGTT = second stage: `table` is a second-stage root with AW code `address_width`.
    pub fn second_stage(table: u64, address_width: u8, did: u16) -> Self {
        let mut entry = Self::with(PasidTranslation::SecondStage, did);
        entry.words[0] |= (table & ADDRESS_MASK) | (u64::from(address_width & 0x7) << 2);
        entry
    }

    /// PGTT = first stage: `table` is a 4-level x86-64-format root (FLPM = 0).
    /// AW still names the input width: QEMU derives the canonical-address
    /// check from it (as Linux, which fills it for first stage too).
    pub fn first_stage(table: u64, address_width: u8, did: u16) -> Self {
        let mut entry = Self::with(PasidTranslation::FirstStage, did);
        entry.words[0] |= u64::from(address_width & 0x7) << 2;
        entry.words[2] = table & ADDRESS_MASK;
        entry
    }

    /// PGTT = pass-through (needs ECAP.PT); AW still names the address width.
    pub fn pass_through(address_width: u8, did: u16) -> Self {
        let mut entry = Self::with(PasidTranslation::PassThrough, did);
        entry.words[0] |= u64::from(address_width & 0x7) << 2;
        entry
    }

    fn with(pgtt: PasidTranslation, did: u16) -> Self {
        let mut words = [0; 8];
        words[0] = ((pgtt as u64) << 6) | PRESENT;
        words[1] = u64::from(did);
        Self { words }
    }

    /// The present bit (P, bit 0).
    pub fn is_present(&self) -> bool {
        self.words[0] & PRESENT != 0
    }

    /// DID (79:64).
    pub fn did(&self) -> u16 {
        self.words[1] as u16
    }

    /// PWSNP (87): walks of this entry's page tables snoop the CPU caches.
    /// Reserved(0) unless ECAP.SMPWC (§9.6); Linux `pasid_set_page_snoop`.
    pub fn with_page_walk_snoop(mut self) -> Self {
        self.words[1] |= PASID_PWSNP;
        self
    }

    /// PWSNP is set.
    pub fn page_walk_snoop(&self) -> bool {
        self.words[1] & PASID_PWSNP != 0
    }

    /// SSADE (9): the hardware records accesses and writes in the A and D bits
    /// of the second-stage leaves (only with ECAP.SLADS; Linux
    /// `pasid_set_ssade`).
    pub fn with_second_stage_dirty(mut self, enable: bool) -> Self {
        if enable {
            self.words[0] |= PASID_SSADE;
        } else {
            self.words[0] &= !PASID_SSADE;
        }
        self
    }

    /// SSADE is set.
    pub fn second_stage_dirty(&self) -> bool {
        self.words[0] & PASID_SSADE != 0
    }
}

/// PASID entry word 0 bit 9: SSADE.
const PASID_SSADE: u64 = 1 << 9;

/// PASID entry word 1 bit 23 = bit 87: PWSNP.
const PASID_PWSNP: u64 = 1 << 23;

/// PASID-table entries per 4 KiB table (§9.5: PASID 5:0 indexes the table).
pub const PASID_TABLE_ENTRIES: usize = 64;

/// The PASID that untagged DMA uses in scalable mode (context RID_PASID = 0).
pub const RID_PASID: u32 = 0;

/// Index of `devfn` in a scalable-mode context table, and whether it lives
/// in the upper table (§9.2: devfn 128-255 use UCTP).
pub fn scalable_context_slot(devfn: u8) -> (bool, usize) {
    (devfn >= 128, usize::from(devfn & 0x7F))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_entries_golden() {
        assert_eq!(
            RootEntry::new(0x0012_3000),
            RootEntry {
                low: 0x0012_3001,
                high: 0
            }
        );
        let entry = ContextEntry::new(TranslationType::Translated, 0x0045_6000, 2, 0x1234);
        assert_eq!(entry.low, 0x0045_6001);
        assert_eq!(entry.high, 0x0012_3402);
        assert_eq!(entry.did(), 0x1234);
        let pt = ContextEntry::new(TranslationType::PassThrough, 0, 2, 7);
        assert_eq!(pt.low, 0x9);
        assert_eq!(pt.high, 0x702);
        assert!(!ContextEntry::default().is_present());
    }

    #[test]
    fn scalable_entries_golden() {
        let root = ScalableRootEntry::new(0x1000, 0x2000);
        assert_eq!((root.low, root.high), (0x1001, 0x2001));
        let context = ScalableContextEntry::new(0x0003_0000, 0);
        assert_eq!(context.words, [0x0003_0001, 0, 0, 0]);
        assert_eq!(PasidDirectoryEntry::new(0x4000).0, 0x4001);

        let second = PasidEntry::second_stage(0x0050_0000, 2, 9);
        assert_eq!(second.words[0], 0x0050_0000 | (2 << 6) | (2 << 2) | 1);
        assert_eq!(second.words[1], 9);
        assert_eq!(&second.words[2..], &[0; 6]);

        let first = PasidEntry::first_stage(0x0060_0000, 2, 3);
        assert_eq!(first.words[0], (1 << 6) | (2 << 2) | 1);
        assert_eq!(first.words[1], 3);
        assert_eq!(first.words[2], 0x0060_0000);

        let pass = PasidEntry::pass_through(2, 4);
        assert_eq!(pass.words[0], 0x109);
        assert_eq!(pass.did(), 4);

        assert_eq!(scalable_context_slot(0x20), (false, 0x20));
        assert_eq!(scalable_context_slot(0x85), (true, 0x05));
    }
}
