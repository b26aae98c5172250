//! Command-buffer entries (AMD IOMMU §2.4 "Commands", 128 bits each, opcode in bits
//! 63:60 of the first quadword) and the range encoding of INVALIDATE_IOMMU_PAGES.

use core::mem::size_of;

/// One 128-bit command as it sits in the command buffer.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command(pub [u64; 2]);

const _: () = assert!(size_of::<Command>() == 16);

/// §2.4 Table 44 command opcodes (bits 63:60 of quad 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// §2.4.1 COMPLETION_WAIT.
    CompletionWait = 0x1,
    /// §2.4.2 INVALIDATE_DEVTAB_ENTRY.
    InvalidateDevtabEntry = 0x2,
    /// §2.4.3 INVALIDATE_IOMMU_PAGES.
    InvalidateIommuPages = 0x3,
    /// §2.4.4 INVALIDATE_IOTLB_PAGES.
    InvalidateIotlbPages = 0x4,
    /// §2.4.5 INVALIDATE_INTERRUPT_TABLE.
    InvalidateInterruptTable = 0x5,
    /// §2.4.6 PREFETCH_IOMMU_PAGES.
    PrefetchIommuPages = 0x6,
    /// §2.4.7 COMPLETE_PPR_REQUEST.
    CompletePprRequest = 0x7,
    /// §2.4.8 INVALIDATE_IOMMU_ALL.
    InvalidateIommuAll = 0x8,
}

impl Opcode {
    /// The opcode `bits` names; `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x1 => Self::CompletionWait,
            0x2 => Self::InvalidateDevtabEntry,
            0x3 => Self::InvalidateIommuPages,
            0x4 => Self::InvalidateIotlbPages,
            0x5 => Self::InvalidateInterruptTable,
            0x6 => Self::PrefetchIommuPages,
            0x7 => Self::CompletePprRequest,
            0x8 => Self::InvalidateIommuAll,
            _ => return None,
        })
    }
}

const OPCODE_SHIFT: u32 = 60;

/// §2.4.1 COMPLETION_WAIT quad 0: S (bit 0) store, I (bit 1) interrupt, F (bit 2)
/// flush queue, Store Address in bits 51:3.
mod completion_wait {
    pub const STORE: u64 = 1 << 0;
    pub const INTERRUPT: u64 = 1 << 1;
    pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_FFF8;
}

/// §2.4.3 INVALIDATE_IOMMU_PAGES: DomainID in quad 0 bits 47:32; quad 1 bit 0 S
/// (size given by the address), bit 1 PDE (also drop cached page-directory entries),
/// bit 2 GN (guest), Address in bits 63:12.
mod iommu_pages {
    pub const DOMAIN_SHIFT: u32 = 32;
    pub const S: u64 = 1 << 0;
    pub const PDE: u64 = 1 << 1;
    pub const ADDRESS_MASK: u64 = !0xFFF;
}

/// §2.4.2/§2.4.5: DeviceID in quad 0 bits 15:0.
const DEVICE_ID_MASK: u64 = 0xFFFF;

const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// §2.4.3: with S=1, an address whose bits 62:12 are all ones (the first zero bit at
/// 63) covers the whole address space; Linux and this driver use this value.
pub const ALL_PAGES_ADDRESS: u64 = 0x7FFF_FFFF_FFFF_F000;

impl Command {
    fn with_opcode(opcode: Opcode, q0: u64, q1: u64) -> Self {
        Self([q0 | (opcode as u64) << OPCODE_SHIFT, q1])
    }

    /// §2.4.1 COMPLETION_WAIT with S=1: once every earlier command has completed, the
    /// IOMMU stores `data` (8 bytes) at `store` (8-byte aligned).
    pub fn completion_wait(store: u64, data: u64) -> Self {
        debug_assert!(store & !completion_wait::ADDRESS_MASK == 0);
        Self::with_opcode(
            Opcode::CompletionWait,
            completion_wait::STORE | (store & completion_wait::ADDRESS_MASK),
            data,
        )
    }

    /// §2.4.1 COMPLETION_WAIT with I=1 (interrupt, no store).
    pub fn completion_wait_interrupt() -> Self {
        Self::with_opcode(Opcode::CompletionWait, completion_wait::INTERRUPT, 0)
    }

    /// §2.4.2 INVALIDATE_DEVTAB_ENTRY: drop the IOMMU's cached copy of one DTE.
    pub fn invalidate_devtab_entry(device_id: u16) -> Self {
        Self::with_opcode(Opcode::InvalidateDevtabEntry, u64::from(device_id), 0)
    }

    /// §2.4.3 INVALIDATE_IOMMU_PAGES for `domain` over `range`; `pde` also drops cached
    /// page-directory entries (needed when table pages were freed).
    pub fn invalidate_iommu_pages(domain: u16, range: PageRange, pde: bool) -> Self {
        let mut q1 = range.address & iommu_pages::ADDRESS_MASK;
        if range.s {
            q1 |= iommu_pages::S;
        }
        if pde {
            q1 |= iommu_pages::PDE;
        }
        Self::with_opcode(
            Opcode::InvalidateIommuPages,
            u64::from(domain) << iommu_pages::DOMAIN_SHIFT,
            q1,
        )
    }

    /// §2.4.5 INVALIDATE_INTERRUPT_TABLE: drop cached IRTEs of one device.
    pub fn invalidate_interrupt_table(device_id: u16) -> Self {
        Self::with_opcode(Opcode::InvalidateInterruptTable, u64::from(device_id), 0)
    }

    /// §2.4.8 INVALIDATE_IOMMU_ALL (only when EFR.IASup).
    pub fn invalidate_all() -> Self {
        Self::with_opcode(Opcode::InvalidateIommuAll, 0, 0)
    }

    /// A command with a reserved opcode (0h): the IOMMU must report ILLEGAL_COMMAND_ERROR.
    /// Used to exercise the error path.
    pub fn illegal() -> Self {
        Self([0, 0])
    }

    /// The command's opcode.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_bits((self.0[0] >> OPCODE_SHIFT) as u8)
    }

    /// The DeviceID a per-device command names.
    pub fn device_id(&self) -> u16 {
        (self.0[0] & DEVICE_ID_MASK) as u16
    }

    /// The DomainID an INVALIDATE_IOMMU_PAGES names.
    pub fn domain(&self) -> u16 {
        (self.0[0] >> iommu_pages::DOMAIN_SHIFT) as u16
    }
}

/// The Address/S pair of INVALIDATE_IOMMU_PAGES (§2.4.3): S=0 names one 4 KiB page;
/// S=1 names a naturally aligned power-of-two range whose size is given by the lowest
/// zero bit of the address at or above bit 12 (zero at bit n => 2^(n+1) bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    /// Address bits 63:12; with `s`, its lowest zero bit gives the size.
    pub address: u64,
    /// S: more than one page.
    pub s: bool,
}

impl PageRange {
    /// Every address of the domain.
    pub const ALL: Self = Self {
        address: ALL_PAGES_ADDRESS,
        s: true,
    };

    /// The smallest encodable range that covers `[start, last]`: the naturally
    /// aligned power-of-two block (at least 4 KiB) containing both ends.
    pub fn covering(start: u64, last: u64) -> Self {
        let (start, last) = (start.min(last), start.max(last));
        // Bits above the highest differing bit are shared; the block is 2^k bytes.
        let differing = (start >> PAGE_SHIFT) ^ (last >> PAGE_SHIFT);
        let k = PAGE_SHIFT + (u64::BITS - differing.leading_zeros());
        if k == PAGE_SHIFT {
            return Self {
                address: start & !(PAGE_SIZE - 1),
                s: false,
            };
        }
        // A block reaching bit 63 cannot be expressed with a zero bit below it.
        if k >= 63 {
            return Self::ALL;
        }
        let base = start & !((1u64 << k) - 1);
        let ones = ((1u64 << (k - 1)) - 1) & !(PAGE_SIZE - 1);
        Self {
            address: base | ones,
            s: true,
        }
    }

    /// The inclusive byte range this encoding invalidates (spec semantics).
    pub fn span(&self) -> (u64, u64) {
        if !self.s {
            let base = self.address & !(PAGE_SIZE - 1);
            return (base, base + (PAGE_SIZE - 1));
        }
        let zero = (self.address | (PAGE_SIZE - 1)).trailing_ones();
        if zero >= 63 {
            return (0, u64::MAX);
        }
        let size = 1u64 << (zero + 1);
        let base = self.address & !(size - 1);
        (base, base + (size - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn completion_wait_golden() {
        // Opcode 1 in 63:60, S=1, store address 0x1234_5678 in 51:3; data in quad 1.
        let cmd = Command::completion_wait(0x1234_5678, 0xDEAD_BEEF_0000_0001);
        assert_eq!(cmd.0, [0x1000_0000_1234_5679, 0xDEAD_BEEF_0000_0001]);
        assert_eq!(cmd.opcode(), Some(Opcode::CompletionWait));
        assert_eq!(
            Command::completion_wait_interrupt().0,
            [0x1000_0000_0000_0002, 0]
        );
    }

    #[test]
    fn invalidate_devtab_and_interrupt_table_golden() {
        assert_eq!(
            Command::invalidate_devtab_entry(0x0028).0,
            [0x2000_0000_0000_0028, 0]
        );
        assert_eq!(
            Command::invalidate_interrupt_table(0x0020).0,
            [0x5000_0000_0000_0020, 0]
        );
        assert_eq!(Command::invalidate_all().0, [0x8000_0000_0000_0000, 0]);
        assert_eq!(Command::illegal().opcode(), None);
    }

    #[test]
    fn invalidate_iommu_pages_golden() {
        // One page at 0x1_2345_6000 in domain 5: S=0, PDE=0.
        let one = Command::invalidate_iommu_pages(
            5,
            PageRange::covering(0x1_2345_6000, 0x1_2345_6FFF),
            false,
        );
        assert_eq!(one.0, [0x3000_0005_0000_0000, 0x0000_0001_2345_6000]);
        // 16 KiB at 0x40000 (4 pages): bits 12 = 1, 13 = 0 => S=1, address 0x41000.
        let four = Command::invalidate_iommu_pages(5, PageRange::covering(0x40000, 0x43FFF), false);
        assert_eq!(four.0, [0x3000_0005_0000_0000, 0x0000_0000_0004_1001]);
        // 2 MiB at 0x20_0000 with PDE: bits 19:12 ones, bit 20 zero.
        let huge =
            Command::invalidate_iommu_pages(1, PageRange::covering(0x20_0000, 0x3F_FFFF), true);
        assert_eq!(huge.0, [0x3000_0001_0000_0000, 0x0000_0000_002F_F003]);
        // Everything.
        let all = Command::invalidate_iommu_pages(9, PageRange::ALL, true);
        assert_eq!(all.0, [0x3000_0009_0000_0000, 0x7FFF_FFFF_FFFF_F003]);
    }

    #[test]
    fn unaligned_ranges_round_up_to_the_covering_block() {
        // 0x3000..=0x4FFF straddles the 16 KiB boundary at 0x4000: needs 32 KiB at 0.
        let range = PageRange::covering(0x3000, 0x4FFF);
        assert_eq!(range.span(), (0, 0x7FFF));
        assert_eq!(PageRange::covering(0, u64::MAX), PageRange::ALL);
        assert_eq!(PageRange::ALL.span(), (0, u64::MAX));
    }

    /// The IOTLB as the spec describes it: cached 4 KiB translations tagged by domain.
    /// `invalidate` decodes the raw command bits independently of `PageRange::span`.
    #[derive(Default)]
    struct ShadowIotlb {
        entries: BTreeSet<(u16, u64)>,
    }

    impl ShadowIotlb {
        fn execute(&mut self, cmd: &Command) {
            assert_eq!(cmd.0[0] >> 60, 3, "not INVALIDATE_IOMMU_PAGES");
            let domain = ((cmd.0[0] >> 32) & 0xFFFF) as u16;
            let s = cmd.0[1] & 1 != 0;
            let address = cmd.0[1] & !0xFFF;
            let (base, size) = if s {
                // Find the first zero bit at or above bit 12.
                let mut bit = 12;
                while bit < 64 && address & (1 << bit) != 0 {
                    bit += 1;
                }
                if bit >= 63 {
                    (0u64, None)
                } else {
                    let size = 1u64 << (bit + 1);
                    (address & !(size - 1), Some(size))
                }
            } else {
                (address, Some(4096))
            };
            self.entries.retain(|&(d, page)| {
                let inside = match size {
                    None => true,
                    Some(size) => page >= base && page - base < size,
                };
                !(d == domain && inside)
            });
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever range was unmapped, the encoded command removes every cached page
        /// of it from its domain, keeps other domains' entries, and never invalidates
        /// more than the smallest aligned power-of-two block covering the range.
        #[test]
        fn range_encoding_invalidates_exactly_the_covering_block(
            start_page in 0u64..(1 << 24),
            pages in 1u64..4096,
            shift in prop_oneof![Just(0u32), Just(24u32), Just(36u32)],
        ) {
            let start = (start_page << 12) << shift;
            let last = start + pages * 4096 - 1;
            let range = PageRange::covering(start, last);
            let (lo, hi) = range.span();
            prop_assert!(lo <= start && last <= hi);
            let size = hi - lo + 1;
            prop_assert!(size.is_power_of_two() && lo.is_multiple_of(size));
            // Minimal: the half-size block containing `start` does not contain `last`.
            if size > 4096 {
                let half = size / 2;
                prop_assert!(start / half != last / half);
            }

            let mut iotlb = ShadowIotlb::default();
            let probe_lo = lo.saturating_sub(8 * 4096);
            let probe_hi = hi.saturating_add(8 * 4096);
            let mut probes: Vec<u64> = (0..16).map(|i| probe_lo + i * 4096).collect();
            probes.extend((0..16).map(|i| probe_hi.saturating_sub(i * 4096) & !0xFFF));
            probes.extend((0..pages.min(64)).map(|i| start + i * 4096));
            probes.push(last & !0xFFF);
            for &page in &probes {
                iotlb.entries.insert((1, page));
                iotlb.entries.insert((2, page));
            }
            iotlb.execute(&Command::invalidate_iommu_pages(1, range, false));
            for &page in &probes {
                let in_block = page >= lo && page <= hi;
                prop_assert_eq!(iotlb.entries.contains(&(1, page)), !in_block);
                prop_assert!(iotlb.entries.contains(&(2, page)));
            }
        }
    }

    use std::vec::Vec;
}
