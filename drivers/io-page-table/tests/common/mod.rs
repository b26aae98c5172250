//! Reference walkers, written from the specs independently of the crate's
//! accessors: each decodes raw memory the way the hardware would.
#![allow(dead_code)]

/// What the hardware would use for one IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefLeaf {
    pub phys: u64,
    pub leaf_iova: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

/// A walk that the hardware would fault on, as opposed to a plain miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

pub type Read<'a> = &'a dyn Fn(u64) -> u64;

fn field(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

fn leaf(iova: u64, base: u64, shift: u32, read: bool, write: bool) -> RefLeaf {
    let mask = (1u64 << shift) - 1;
    RefLeaf {
        phys: base + (iova & mask),
        leaf_iova: iova & !mask,
        size: 1 << shift,
        read,
        write,
    }
}

/// VT-d §9.8: second-stage walk; levels 3..5, R/W at every level, PS at 2M/1G.
pub fn vtd_ss(read: Read, root: u64, levels: u32, iova: u64) -> Result<Option<RefLeaf>, Malformed> {
    let mut table = root;
    let (mut r, mut w) = (true, true);
    for level in (0..levels).rev() {
        let shift = 12 + 9 * level;
        let pte = read(table + 8 * field(iova, shift + 8, shift));
        if pte & 0b11 == 0 {
            return Ok(None);
        }
        r &= pte & 1 != 0;
        w &= pte & 2 != 0;
        let ps = pte & (1 << 7) != 0;
        if level >= 3 && ps {
            return Err(Malformed("PS set above the 1 GiB level"));
        }
        if level == 0 || ps {
            let base = pte & ((1u64 << 52) - 1) & !((1u64 << shift) - 1);
            return Ok(Some(leaf(iova, base, shift, r, w)));
        }
        table = pte & 0x000f_ffff_ffff_f000;
    }
    unreachable!()
}

/// SDM §4.5: 4-/5-level walk; P, RW/US ANDed, PS at PDE/PDPTE; `need_us` models
/// QEMU's VT-d first stage (every request is a user request).
pub fn x86(
    read: Read,
    root: u64,
    levels: u32,
    need_us: bool,
    iova: u64,
) -> Result<Option<RefLeaf>, Malformed> {
    let mut table = root;
    let mut w = true;
    for level in (0..levels).rev() {
        let shift = 12 + 9 * level;
        let pte = read(table + 8 * field(iova, shift + 8, shift));
        if pte & 1 == 0 {
            return Ok(None);
        }
        if need_us && pte & 4 == 0 {
            return Err(Malformed("US clear (QEMU VT-d first stage faults)"));
        }
        if pte & (1 << 5) == 0 {
            return Err(Malformed("A clear: the walker would have to set it"));
        }
        w &= pte & 2 != 0;
        let ps = pte & (1 << 7) != 0;
        if level >= 3 && ps {
            return Err(Malformed("PS set in a PML4E/PML5E"));
        }
        if level == 0 || ps {
            if w && pte & (1 << 6) == 0 {
                return Err(Malformed("writable leaf without D"));
            }
            let base = pte & ((1u64 << 52) - 1) & !((1u64 << shift) - 1);
            return Ok(Some(leaf(iova, base, shift, true, w)));
        }
        table = pte & 0x000f_ffff_ffff_f000;
    }
    unreachable!()
}

/// AMD IOMMU §2.2.3: walk from DTE.Mode, Next Level drives the walk (skipping
/// allowed), IR/IW checked at every level, NL=0 is a PTE of the level's size.
/// NL=7 is a PTE whose size is set by the lowest clear address bit from bit 12
/// (that bit's position + 1), above the level's own size and below the next
/// level's, replicated in every entry of the table that the page spans.
pub fn amd_v1(read: Read, root: u64, mode: u32, iova: u64) -> Result<Option<RefLeaf>, Malformed> {
    let mut table = root;
    let mut level = mode; // 1-based AMD level of `table`
    let (mut r, mut w) = (true, true);
    loop {
        let shift = 12 + 9 * (level - 1);
        let hi = (shift + 8).min(63);
        let pte = read(table + 8 * field(iova, hi, shift));
        if pte & 1 == 0 {
            return Ok(None);
        }
        r &= pte & (1 << 61) != 0;
        w &= pte & (1 << 62) != 0;
        let next = field(pte, 11, 9) as u32;
        let addr = pte & 0x000f_ffff_ffff_f000;
        match next {
            0 => {
                let base = addr & !((1u64 << shift) - 1);
                return Ok(Some(leaf(iova, base, shift, r, w)));
            }
            7 => {
                let lowest_clear = (addr | 0xfff).trailing_ones();
                let size_shift = lowest_clear + 1;
                if size_shift <= shift || size_shift >= shift + 9 {
                    return Err(Malformed("Next Level 7 size outside its level"));
                }
                let copies = 1u64 << (size_shift - shift);
                let first = field(iova, (shift + 8).min(63), shift) & !(copies - 1);
                if (first..first + copies).any(|i| read(table + 8 * i) != pte) {
                    return Err(Malformed("Next Level 7 page not replicated"));
                }
                let base = addr & !((1u64 << size_shift) - 1);
                return Ok(Some(leaf(iova, base, size_shift, r, w)));
            }
            n if n >= level => return Err(Malformed("Next Level not below the current level")),
            n => {
                table = addr;
                level = n;
            }
        }
    }
}

/// Which ARM stage the reference walker decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmStage {
    S1,
    S2,
}

/// ARM ARM D8.2/D8.3: start level derived from the *programmed fields* (TG, T0SZ,
/// and for stage 2 SL0 with concatenation), then a descriptor walk.
pub fn arm(
    read: Read,
    root: u64,
    stage: ArmStage,
    tg: u8,
    t0sz: u8,
    sl0: u8,
    iova: u64,
) -> Result<Option<RefLeaf>, Malformed> {
    let g: u32 = match tg {
        0b00 => 12,
        0b01 => 16,
        0b10 => 14,
        _ => return Err(Malformed("reserved TG")),
    };
    let stride = g - 3;
    let ias = 64 - u32::from(t0sz);
    if ias < 64 && iova >> ias != 0 {
        return Err(Malformed("IOVA beyond T0SZ"));
    }
    let start: u32 = match stage {
        // Stage 1: the level whose index covers the top input bit.
        ArmStage::S1 => 4 - (ias - g).div_ceil(stride),
        ArmStage::S2 => match (g, sl0) {
            (12, s) if s <= 2 => 2 - u32::from(s),
            (14 | 16, s) if s <= 2 => 3 - u32::from(s),
            (14, 3) => 0,
            _ => return Err(Malformed("reserved SL0")),
        },
    };
    // Bits resolved below the start level; the rest index the (possibly
    // concatenated) root.
    let below = g + stride * (3 - start);
    let root_bits = ias - below;
    if stage == ArmStage::S2 && root_bits > stride + 4 {
        return Err(Malformed("more than 16 concatenated tables"));
    }
    let mut table = root;
    let (mut r, mut w) = (true, true);
    for level in start..=3 {
        let shift = g + stride * (3 - level);
        let bits = if level == start { root_bits } else { stride };
        let idx = (iova >> shift) & ((1u64 << bits) - 1);
        let desc = read(table + 8 * idx);
        if desc & 1 == 0 {
            return Ok(None);
        }
        let addr = desc & ((1u64 << 48) - 1) & !((1u64 << g) - 1);
        let is_table_or_page = desc & 2 != 0;
        if level < 3 && is_table_or_page {
            table = addr;
            continue;
        }
        if level == 3 && !is_table_or_page {
            return Err(Malformed("block type at level 3"));
        }
        let block_ok = match level {
            3 | 2 => true,
            1 => g == 12,
            _ => false,
        };
        if !block_ok {
            return Err(Malformed("block at a level the granule forbids"));
        }
        if desc & (1 << 10) == 0 {
            return Err(Malformed("AF clear: SMMU without HTTU faults"));
        }
        match stage {
            ArmStage::S1 => {
                w &= desc & (1 << 7) == 0;
            }
            ArmStage::S2 => {
                r &= desc & (1 << 6) != 0;
                w &= desc & (1 << 7) != 0;
            }
        }
        if desc & (1 << 52) != 0 {
            return contiguous_leaf(read, table, g, level, shift, bits, desc, iova, r, w);
        }
        let base = addr & !((1u64 << shift) - 1);
        return Ok(Some(leaf(iova, base, shift, r, w)));
    }
    unreachable!()
}

/// D8.6.1: a descriptor with the Contiguous bit is one of an aligned run (4K
/// granule: 16 entries at every level; 16K: 128 pages or 32 blocks; 64K: 32) that
/// all carry the bit, share their attributes, and map adjacent output addresses
/// from a base aligned to the run. Anything else is a programming error the TLB
/// may turn into a conflict.
#[allow(clippy::too_many_arguments)]
fn contiguous_leaf(
    read: Read,
    table: u64,
    g: u32,
    level: u32,
    shift: u32,
    bits: u32,
    desc: u64,
    iova: u64,
    r: bool,
    w: bool,
) -> Result<Option<RefLeaf>, Malformed> {
    let entries: u64 = match (g, level) {
        (12, _) => 16,
        (14, 3) => 128,
        _ => 32,
    };
    if entries > 1 << bits {
        return Err(Malformed("contiguous run longer than its table"));
    }
    let addr_mask = ((1u64 << 48) - 1) & !((1u64 << g) - 1);
    let run_shift = shift + entries.trailing_zeros();
    let first = ((iova >> shift) & ((1u64 << bits) - 1)) & !(entries - 1);
    let first_desc = read(table + 8 * first);
    let run_base = first_desc & addr_mask;
    if run_base & ((1u64 << run_shift) - 1) != 0 {
        return Err(Malformed("contiguous run output not aligned"));
    }
    for i in 0..entries {
        let d = read(table + 8 * (first + i));
        if d & !addr_mask != desc & !addr_mask {
            return Err(Malformed("contiguous run with mixed attributes"));
        }
        if d & addr_mask != run_base + (i << shift) {
            return Err(Malformed("contiguous run output not adjacent"));
        }
    }
    Ok(Some(leaf(iova, run_base, run_shift, r, w)))
}
