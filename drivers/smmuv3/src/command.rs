//! Command queue entries (SMMUv3 §4 Commands): 16 bytes each, opcode in
//! bits `[7:0]` of the first doubleword.

use crate::regs::Granule;

/// One encoded command (SMMUv3 §4.1.1 command format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCommand(pub [u64; 2]);

const _: () = assert!(core::mem::size_of::<RawCommand>() == 16);

/// SMMUv3 §4.1 opcodes.
pub mod opcode {
    /// §4.3.1.
    pub const CFGI_STE: u8 = 0x03;
    /// §4.3.2 (range 31: CFGI_ALL).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// §4.3.3.
    pub const CFGI_CD: u8 = 0x05;
    /// §4.3.4.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// §4.4.2.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// §4.4.3.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// §4.4.4.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// §4.4.5.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// §4.4.9.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// §4.4.8.
    pub const TLBI_S2_IPA: u8 = 0x2A;
    /// §4.4.10.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// §4.5.1.
    pub const ATC_INV: u8 = 0x40;
    /// §4.7.3.
    pub const CMD_SYNC: u8 = 0x46;
}

/// The range part of a TLBI by address (SMMUv3 §4.4.1.1 range invalidation):
/// `(NUM + 1) << SCALE` pages of granule TG from Address, when IDR3.RIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// TG: the granule the pages are of.
    pub granule: Granule,
    /// `NUM[16:12]` (0..=31).
    pub num: u8,
    /// `SCALE[24:20]` (0..=31).
    pub scale: u8,
}

impl TlbiRange {
    /// Pages covered.
    pub fn pages(&self) -> u64 {
        (u64::from(self.num) + 1) << self.scale
    }
}

/// A decoded command the driver issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// §4.3.1 CFGI_STE: the SMMU refetches the STE of `sid`.
    CfgiSte {
        /// The StreamID.
        sid: u32,
        /// Leaf: not the level-1 descriptor.
        leaf: bool,
    },
    /// §4.3.2 CFGI_STE_RANGE: StreamIDs `sid & !(2^(range+1)-1)` .. (range 31 = all).
    CfgiSteRange {
        /// A StreamID in the range.
        sid: u32,
        /// log2 of the range's size, minus one.
        range: u8,
    },
    /// §4.3.3 CFGI_CD: descriptor `ssid` of stream `sid`.
    CfgiCd {
        /// The StreamID.
        sid: u32,
        /// The SubstreamID (the CD's index).
        ssid: u32,
        /// Leaf: not the level-1 CD descriptor.
        leaf: bool,
    },
    /// §4.3.4 CFGI_CD_ALL: every descriptor of stream `sid`.
    CfgiCdAll {
        /// The StreamID.
        sid: u32,
    },
    /// §4.4.2 TLBI_NH_ALL: all stage-1 entries of `vmid`.
    TlbiNhAll {
        /// The VMID.
        vmid: u16,
    },
    /// §4.4.3 TLBI_NH_ASID.
    TlbiNhAsid {
        /// The VMID.
        vmid: u16,
        /// The ASID.
        asid: u16,
    },
    /// §4.4.4 TLBI_NH_VA: stage-1 entries of `asid` at `addr` (or a range).
    TlbiNhVa {
        /// The VMID.
        vmid: u16,
        /// The ASID.
        asid: u16,
        /// The first address.
        addr: u64,
        /// Leaf: only last-level entries changed.
        leaf: bool,
        /// The range (with IDR3.RIL); `None`: the entries holding `addr`.
        range: Option<TlbiRange>,
    },
    /// §4.4.8 TLBI_S2_IPA: stage-2 entries of `vmid` at IPA `addr` (or a range).
    TlbiS2Ipa {
        /// The VMID.
        vmid: u16,
        /// The first IPA.
        addr: u64,
        /// Leaf: only last-level entries changed.
        leaf: bool,
        /// The range (with IDR3.RIL); `None`: the entries holding `addr`.
        range: Option<TlbiRange>,
    },
    /// §4.4.9 TLBI_S12_VMALL: every entry of `vmid`, both stages.
    TlbiS12Vmall {
        /// The VMID.
        vmid: u16,
    },
    /// §4.4.10 TLBI_NSNH_ALL: every non-secure, non-hypervisor entry.
    TlbiNsnhAll,
    /// §4.7.3 CMD_SYNC without completion signal (CS = SIG_NONE): completion is
    /// observed through CMDQ_CONS.
    Sync,
}

/// dword0 `SID[63:32]`.
const SID_SHIFT: u32 = 32;
/// dword0 `VMID[47:32]` of TLBI commands.
const VMID_SHIFT: u32 = 32;
/// dword0 `ASID[63:48]` of TLBI commands.
const ASID_SHIFT: u32 = 48;
/// dword0 `SSID[31:12]` of CFGI_CD.
const SSID_SHIFT: u32 = 12;
/// dword0 `NUM[16:12]` and `SCALE[24:20]` of ranged TLBIs.
const NUM_SHIFT: u32 = 12;
const SCALE_SHIFT: u32 = 20;
/// dword1 `Leaf[0]`, `TG[11:10]`, `Address[63:12]`.
const LEAF: u64 = 1;
const TG_SHIFT: u32 = 10;
const ADDR_MASK: u64 = !0xFFF;
/// dword1 `Range[4:0]` of CFGI_STE_RANGE.
const RANGE_MASK: u64 = 0x1F;
/// IPA bits of TLBI_S2_IPA `Address[51:12]`.
const IPA_MASK: u64 = ((1 << 52) - 1) & !0xFFF;

impl Command {
    /// CFGI_ALL is CFGI_STE_RANGE with Range = 31 (SMMUv3 §4.3.2).
    pub const CFGI_ALL: Command = Command::CfgiSteRange { sid: 0, range: 31 };

    /// The command's opcode ([`opcode`]).
    pub fn opcode(&self) -> u8 {
        match self {
            Command::CfgiSte { .. } => opcode::CFGI_STE,
            Command::CfgiSteRange { .. } => opcode::CFGI_STE_RANGE,
            Command::CfgiCd { .. } => opcode::CFGI_CD,
            Command::CfgiCdAll { .. } => opcode::CFGI_CD_ALL,
            Command::TlbiNhAll { .. } => opcode::TLBI_NH_ALL,
            Command::TlbiNhAsid { .. } => opcode::TLBI_NH_ASID,
            Command::TlbiNhVa { .. } => opcode::TLBI_NH_VA,
            Command::TlbiS2Ipa { .. } => opcode::TLBI_S2_IPA,
            Command::TlbiS12Vmall { .. } => opcode::TLBI_S12_VMALL,
            Command::TlbiNsnhAll => opcode::TLBI_NSNH_ALL,
            Command::Sync => opcode::CMD_SYNC,
        }
    }

    /// The two doublewords as the queue holds them.
    pub fn encode(&self) -> RawCommand {
        let op = u64::from(self.opcode());
        let range_bits = |range: &Option<TlbiRange>| -> (u64, u64) {
            match range {
                Some(r) => (
                    (u64::from(r.num & 0x1F) << NUM_SHIFT)
                        | (u64::from(r.scale & 0x1F) << SCALE_SHIFT),
                    r.granule.tlbi_tg() << TG_SHIFT,
                ),
                None => (0, 0),
            }
        };
        match *self {
            Command::CfgiSte { sid, leaf } => RawCommand([
                op | (u64::from(sid) << SID_SHIFT),
                if leaf { LEAF } else { 0 },
            ]),
            Command::CfgiSteRange { sid, range } => RawCommand([
                op | (u64::from(sid) << SID_SHIFT),
                u64::from(range) & RANGE_MASK,
            ]),
            Command::CfgiCd { sid, ssid, leaf } => RawCommand([
                op | (u64::from(ssid & 0xF_FFFF) << SSID_SHIFT) | (u64::from(sid) << SID_SHIFT),
                if leaf { LEAF } else { 0 },
            ]),
            Command::CfgiCdAll { sid } => RawCommand([op | (u64::from(sid) << SID_SHIFT), 0]),
            Command::TlbiNhAll { vmid } => RawCommand([op | (u64::from(vmid) << VMID_SHIFT), 0]),
            Command::TlbiNhAsid { vmid, asid } => RawCommand([
                op | (u64::from(vmid) << VMID_SHIFT) | (u64::from(asid) << ASID_SHIFT),
                0,
            ]),
            Command::TlbiNhVa {
                vmid,
                asid,
                addr,
                leaf,
                range,
            } => {
                let (d0, d1) = range_bits(&range);
                RawCommand([
                    op | d0 | (u64::from(vmid) << VMID_SHIFT) | (u64::from(asid) << ASID_SHIFT),
                    d1 | (addr & ADDR_MASK) | if leaf { LEAF } else { 0 },
                ])
            }
            Command::TlbiS2Ipa {
                vmid,
                addr,
                leaf,
                range,
            } => {
                let (d0, d1) = range_bits(&range);
                RawCommand([
                    op | d0 | (u64::from(vmid) << VMID_SHIFT),
                    d1 | (addr & IPA_MASK) | if leaf { LEAF } else { 0 },
                ])
            }
            Command::TlbiS12Vmall { vmid } => RawCommand([op | (u64::from(vmid) << VMID_SHIFT), 0]),
            Command::TlbiNsnhAll => RawCommand([op, 0]),
            // CS[13:12] = 0 (SIG_NONE): completion is seen as CONS passing it.
            Command::Sync => RawCommand([op, 0]),
        }
    }
}

/// Splits `[start, start + len)` (page aligned) into ranged TLBIs (SMMUv3
/// §4.4.1.1): each covers `(NUM+1) << SCALE` pages and starts at an address
/// aligned to `1 << SCALE` pages, as Linux's `arm_smmu_cmdq_issue_range` does.
pub fn split_range(
    granule: Granule,
    start: u64,
    len: u64,
) -> impl Iterator<Item = (u64, TlbiRange)> {
    let page_shift = granule.shift();
    let mut addr = start;
    let mut pages = len >> page_shift;
    core::iter::from_fn(move || {
        if pages == 0 {
            return None;
        }
        // The largest scale with addr aligned and at least one chunk remaining.
        let align_scale = (addr >> page_shift).trailing_zeros().min(31);
        let size_scale = 63 - pages.leading_zeros();
        let scale = align_scale.min(size_scale);
        let chunks = (pages >> scale).min(32);
        let range = TlbiRange {
            granule,
            num: (chunks - 1) as u8,
            scale: scale as u8,
        };
        let covered = chunks << scale;
        let this = addr;
        addr += covered << page_shift;
        pages -= covered;
        Some((this, range))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn golden_cfgi_and_sync() {
        assert_eq!(
            Command::CfgiSte {
                sid: 0x10,
                leaf: true
            }
            .encode()
            .0,
            [0x0000_0010_0000_0003, 1]
        );
        assert_eq!(Command::CFGI_ALL.encode().0, [0x04, 31]);
        assert_eq!(
            Command::CfgiCd {
                sid: 8,
                ssid: 0,
                leaf: true
            }
            .encode()
            .0,
            [0x0000_0008_0000_0005, 1]
        );
        assert_eq!(
            Command::CfgiCdAll { sid: 8 }.encode().0,
            [0x0000_0008_0000_0006, 0]
        );
        assert_eq!(Command::Sync.encode().0, [0x46, 0]);
        assert_eq!(Command::TlbiNsnhAll.encode().0, [0x30, 0]);
    }

    #[test]
    fn golden_tlbi() {
        assert_eq!(
            Command::TlbiNhAsid { vmid: 2, asid: 5 }.encode().0,
            [0x0005_0002_0000_0011, 0]
        );
        assert_eq!(
            Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                addr: 0x1234_5000,
                leaf: true,
                range: None
            }
            .encode()
            .0,
            [0x0001_0000_0000_0012, 0x1234_5001]
        );
        // 8 pages of 4K: NUM = 7, SCALE = 0, TG = 1.
        assert_eq!(
            Command::TlbiS2Ipa {
                vmid: 9,
                addr: 0x8000,
                leaf: true,
                range: Some(TlbiRange {
                    granule: Granule::K4,
                    num: 7,
                    scale: 0
                })
            }
            .encode()
            .0,
            [0x0000_0009_0000_702A, 0x8000 | (1 << 10) | 1]
        );
        assert_eq!(
            Command::TlbiS12Vmall { vmid: 3 }.encode().0,
            [0x0000_0003_0000_0028, 0]
        );
    }

    #[test]
    fn aligned_power_of_two_is_one_range() {
        let ranges: Vec<_> = split_range(Granule::K4, 0x20_0000, 0x20_0000).collect();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].0, 0x20_0000);
        assert_eq!(ranges[0].1.pages(), 512);
        let single: Vec<_> = split_range(Granule::K4, 0x5000, 0x1000).collect();
        assert_eq!(
            single,
            [(
                0x5000,
                TlbiRange {
                    granule: Granule::K4,
                    num: 0,
                    scale: 0
                }
            )]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The ranges tile the request exactly, in order, each aligned to its scale.
        #[test]
        fn ranges_tile_the_request(start_page in 0u64..1 << 20, pages in 1u64..1 << 12) {
            let granule = Granule::K4;
            let mut next = start_page << 12;
            for (addr, range) in split_range(granule, start_page << 12, pages << 12) {
                prop_assert_eq!(addr, next);
                prop_assert_eq!((addr >> 12) % (1u64 << range.scale), 0);
                next = addr + (range.pages() << 12);
            }
            prop_assert_eq!(next, (start_page + pages) << 12);
        }
    }
}
