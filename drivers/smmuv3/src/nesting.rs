//! What a task may hand the SMMU for its own stage 1 over a kernel-owned
//! stage 2 (nesting, SMMUv3 §3.3.2): the stage-1 half of a guest STE, and
//! invalidation commands for its own context. Both are checked or rewritten
//! here, so that a task can only reach what its domain covers.

use alloc::vec;
use alloc::vec::Vec;

use iommu::{DeviceId, IommuError};

use crate::command::{RawCommand, opcode};

/// SMMUv3 §5.2 STE word 0 of a guest: `V[0]`, `Config[3:1]`, `S1Fmt[5:4]`,
/// `S1ContextPtr[51:6]`, `S1CDMax[63:59]`.
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

/// Rewrites one command a guest SMMUv3 driver issued to its vIOMMU into what
/// the SMMU may execute (Linux `arm_vsmmu_convert_user_cmd`): TLBI_NH_* get
/// the vIOMMU's VMID (TLBI_NSNH_ALL becomes TLBI_NH_ALL of that VMID, the
/// guest's "everything"); CFGI_CD, CFGI_CD_ALL and ATC_INV name a virtual
/// StreamID, replaced by the StreamID its vDEVICE binds. A virtual StreamID
/// with no vDEVICE, and any other opcode, is refused (SMMUv3 §4.3, §4.4,
/// §4.5).
pub fn translate_viommu_command(
    cmd: [u64; 2],
    vmid: u16,
    vdevices: &[(u64, DeviceId)],
) -> Result<RawCommand, IommuError> {
    const OPCODE: u64 = 0xFF;
    const VMID_FIELD: u64 = 0xFFFF << 32;
    const SID_FIELD: u64 = 0xFFFF_FFFF << 32;
    let with_vmid = |word0: u64| (word0 & !VMID_FIELD) | (u64::from(vmid) << 32);
    match (cmd[0] & OPCODE) as u8 {
        opcode::TLBI_NH_ALL | opcode::TLBI_NH_ASID | opcode::TLBI_NH_VA | opcode::TLBI_NH_VAA => {
            Ok(RawCommand([with_vmid(cmd[0]), cmd[1]]))
        }
        opcode::TLBI_NSNH_ALL => Ok(RawCommand([
            with_vmid((cmd[0] & !OPCODE) | u64::from(opcode::TLBI_NH_ALL)),
            cmd[1],
        ])),
        opcode::CFGI_CD | opcode::CFGI_CD_ALL | opcode::ATC_INV => {
            let virtual_sid = cmd[0] >> 32;
            let sid = vdevices
                .iter()
                .find(|&&(virt, _)| virt == virtual_sid)
                .map(|&(_, device)| device.0)
                .ok_or(IommuError::Refused)?;
            Ok(RawCommand([
                (cmd[0] & !SID_FIELD) | (u64::from(sid) << 32),
                cmd[1],
            ]))
        }
        _ => Err(IommuError::Refused),
    }
}
