//! What a task may hand the SMMU for its own stage 1 over a kernel-owned
//! stage 2 (nesting, SMMUv3 §3.3.2): the stage-1 half of a guest STE, and
//! invalidation commands for its own context. Both are checked or rewritten
//! here, so that a task can only reach what its domain covers.

use alloc::vec;
use alloc::vec::Vec;

use crate::command::{RawCommand, opcode};

/// SMMUv3 §5.2 STE word 0 of a guest: V[0], Config[3:1], S1Fmt[5:4],
/// S1ContextPtr[51:6], S1CDMax[63:59].
const GUEST_STE_V: u64 = 1;
const GUEST_STE_CONFIG_MASK: u64 = 0b1110;
const GUEST_STE_CONFIG_S1: u64 = 0b101 << 1;
const GUEST_STE_S1FMT_MASK: u64 = 0b11 << 4;
const GUEST_STE_CD_MASK: u64 = ((1 << 52) - 1) & !0x3F;
const GUEST_STE_S1CDMAX_SHIFT: u32 = 59;

/// The CD address (an IPA of the parent's stage 2) of a guest STE that is
/// valid, stage-1 translate, with a linear single CD (S1Fmt = 0, S1CDMax = 0:
/// QEMU has no substreams); `None` for anything else.
pub fn guest_cd_address(ste: [u64; 2]) -> Option<u64> {
    let word0 = ste[0];
    let valid = word0 & GUEST_STE_V != 0
        && word0 & GUEST_STE_CONFIG_MASK == GUEST_STE_CONFIG_S1
        && word0 & GUEST_STE_S1FMT_MASK == 0
        && word0 >> GUEST_STE_S1CDMAX_SHIFT == 0;
    valid.then_some(word0 & GUEST_STE_CD_MASK)
}

/// Rewrites a task's stage-1 invalidation so it can only touch its own
/// context: TLBI_NH_* get the parent's VMID, CFGI_CD* get each of the
/// domain's StreamIDs; anything else is refused (SMMUv3 §4.3, §4.4).
pub fn confine_guest_command(cmd: [u64; 2], vmid: u16, streams: &[u32]) -> Option<Vec<RawCommand>> {
    const VMID_FIELD: u64 = 0xFFFF << 32;
    const SID_FIELD: u64 = 0xFFFF_FFFF << 32;
    let op = (cmd[0] & 0xFF) as u8;
    match op {
        opcode::TLBI_NH_ALL | opcode::TLBI_NH_ASID | opcode::TLBI_NH_VA | opcode::TLBI_NH_VAA => {
            Some(vec![RawCommand([
                (cmd[0] & !VMID_FIELD) | (u64::from(vmid) << 32),
                cmd[1],
            ])])
        }
        opcode::CFGI_CD | opcode::CFGI_CD_ALL => Some(
            streams
                .iter()
                .map(|&sid| RawCommand([(cmd[0] & !SID_FIELD) | (u64::from(sid) << 32), cmd[1]]))
                .collect(),
        ),
        _ => None,
    }
}
