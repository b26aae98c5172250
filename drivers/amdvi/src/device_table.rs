//! Device table entries (AMD IOMMU §2.2.2.1 "Device Table Entry Format", Table 7).
//!
//! The device table is indexed by DeviceID (bus << 8 | devfn) and holds one 256-bit
//! entry per requester. This driver never leaves a requester without a valid entry:
//! an unattached device gets [`Dte::blocked`] (V=1, TV=1, Mode=0 and no IR/IW: DMA is
//! refused, and interrupts are aborted).

use core::mem::size_of;

/// One device table entry, four little-endian quadwords as the IOMMU reads them.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dte(pub [u64; 4]);

const _: () = assert!(size_of::<Dte>() == 32);

/// §2.2.2.1 field positions.
mod field {
    /// Quad 0 bit 0 V: the entry is valid.
    pub const V: u64 = 1 << 0;
    /// Quad 0 bit 1 TV: the translation fields (Mode, root, IR/IW) are valid.
    pub const TV: u64 = 1 << 1;
    /// Quad 0 bits 11:9 Mode: page-table levels (0 = no translation, 1-6, 7 reserved).
    pub const MODE_SHIFT: u32 = 9;
    pub const MODE_MASK: u64 = 0x7 << MODE_SHIFT;
    /// Quad 0 bits 51:12 Host Page Table Root Pointer.
    pub const ROOT_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    /// Quad 0 bits 8:7 HAD: host access (A) and dirty (D) bits updated in
    /// the v1 page table (EFR HASup/HDSup; Linux `DTE_FLAG_HAD`).
    pub const HAD: u64 = 0b11 << 7;
    /// Quad 0 bit 61 IR: reads permitted; bit 62 IW: writes permitted.
    pub const IR: u64 = 1 << 61;
    pub const IW: u64 = 1 << 62;
    /// Quad 1 bits 15:0 DomainID.
    pub const DOMAIN_MASK: u64 = 0xFFFF;
    /// Quad 1 bits 41:40 SysMgt.
    pub const SYS_MGT_SHIFT: u32 = 40;
    /// Quad 2 bit 0 IV: the interrupt fields are valid.
    pub const IV: u64 = 1 << 0;
    /// Quad 2 bits 4:1 IntTabLen: log2 of the number of IRTEs (at most 11).
    pub const INT_TAB_LEN_SHIFT: u32 = 1;
    /// Quad 2 bits 51:6 Interrupt Table Root Pointer (64-byte aligned).
    pub const INT_ROOT_MASK: u64 = 0x000F_FFFF_FFFF_FFC0;
    /// Quad 2 bits 56 InitPass, 57 EIntPass, 58 NMIPass, 62 Lint0Pass, 63 Lint1Pass.
    pub const INIT_PASS: u64 = 1 << 56;
    pub const EINT_PASS: u64 = 1 << 57;
    pub const NMI_PASS: u64 = 1 << 58;
    pub const LINT0_PASS: u64 = 1 << 62;
    pub const LINT1_PASS: u64 = 1 << 63;
    /// Quad 2 bits 61:60 IntCtl.
    pub const INT_CTL_SHIFT: u32 = 60;
    pub const INT_CTL_MASK: u64 = 0x3 << INT_CTL_SHIFT;
}

/// §2.2.2.1 IntCtl: what happens to fixed and arbitrated interrupts of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntCtl {
    /// 00b: target abort (interrupts are dropped).
    Abort = 0,
    /// 01b: forwarded unmapped.
    Forward = 1,
    /// 10b: remapped through the interrupt remapping table.
    Remap = 2,
}

/// How a device's interrupts are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupts {
    /// IV=1, IntCtl=Abort: no interrupt from the device reaches a CPU.
    Blocked,
    /// IV=1, IntCtl=Remap through a table of `1 << log2_len` IRTEs at `table`.
    Remapped {
        /// The interrupt remapping table.
        table: u64,
        /// log2 of its entries (IntTabLen).
        log2_len: u8,
    },
}

/// Largest IntTabLen (§2.2.2.1: 2048 entries).
pub const MAX_INT_TAB_LOG2: u8 = 11;

/// Why a DTE cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DteError {
    /// Page-table levels outside 1..=6.
    BadMode(u8),
    /// A table pointer is not aligned (4 KiB for page tables, 64 B for IRTs) or has
    /// bits above 51.
    BadPointer(u64),
    /// IntTabLen above 11.
    BadTableLength(u8),
}

/// The `DTE setting` byte of an IVHD device entry (AMD IOMMU §5.2.2.2 Table 96) that
/// system software copies into the DTE: INITPass (bit 0), EIntPass (1), NMIPass (2),
/// SysMgt (5:4), Lint0Pass (6), Lint1Pass (7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareSetting(pub u8);

impl Dte {
    /// V=1, TV=1, Mode=0, IR=IW=0: every DMA is refused; interrupts are aborted.
    pub const fn blocked() -> Self {
        Self([field::V | field::TV, 0, field::IV, 0])
    }

    /// V=1, TV=1, Mode=0 with IR=IW=1: DMA passes untranslated (IOVA = physical
    /// address, §2.2.2.1 Mode 000b) under DomainID `domain`; interrupts aborted.
    pub const fn identity(domain: u16) -> Self {
        Self([
            field::V | field::TV | field::IR | field::IW,
            domain as u64,
            field::IV,
            0,
        ])
    }

    /// V=1, TV=1, DMA translated by a `levels`-level v1 table at `root` (§2.2.3) with
    /// DomainID `domain`; `read`/`write` are the DTE-level IR/IW permissions.
    pub fn translated(
        root: u64,
        levels: u8,
        domain: u16,
        read: bool,
        write: bool,
    ) -> Result<Self, DteError> {
        if !(1..=6).contains(&levels) {
            return Err(DteError::BadMode(levels));
        }
        if root & !field::ROOT_MASK != 0 {
            return Err(DteError::BadPointer(root));
        }
        let mut q0 = field::V | field::TV | u64::from(levels) << field::MODE_SHIFT | root;
        if read {
            q0 |= field::IR;
        }
        if write {
            q0 |= field::IW;
        }
        Ok(Self([q0, u64::from(domain), field::IV, 0]))
    }

    /// HAD on or off: the IOMMU records accesses and writes in the A and D
    /// bits of the host page table's leaves (dirty tracking).
    pub fn with_host_access_dirty(mut self, enable: bool) -> Self {
        if enable {
            self.0[0] |= field::HAD;
        } else {
            self.0[0] &= !field::HAD;
        }
        self
    }

    /// HAD: the IOMMU sets A and D in the host tables.
    pub fn host_access_dirty(&self) -> bool {
        self.0[0] & field::HAD == field::HAD
    }

    /// Replaces the interrupt fields (quad 2 IV, IntTabLen, root, IntCtl).
    /// Blocking keeps firmware's pass bits (the IOAPIC's LINT0, say);
    /// remapping drops them: a device whose interrupts the kernel routes
    /// (for a task) sends only what its remapping table allows, never an
    /// INIT, ExtInt, NMI or LINT passed through untranslated (§2.2.5).
    pub fn with_interrupts(mut self, interrupts: Interrupts) -> Result<Self, DteError> {
        let passes = field::INIT_PASS
            | field::EINT_PASS
            | field::NMI_PASS
            | field::LINT0_PASS
            | field::LINT1_PASS;
        let keep = match interrupts {
            Interrupts::Blocked => self.0[2] & passes,
            Interrupts::Remapped { .. } => 0,
        };
        self.0[2] = keep
            | match interrupts {
                Interrupts::Blocked => field::IV | (IntCtl::Abort as u64) << field::INT_CTL_SHIFT,
                Interrupts::Remapped { table, log2_len } => {
                    if log2_len > MAX_INT_TAB_LOG2 {
                        return Err(DteError::BadTableLength(log2_len));
                    }
                    if table & !field::INT_ROOT_MASK != 0 {
                        return Err(DteError::BadPointer(table));
                    }
                    field::IV
                        | u64::from(log2_len) << field::INT_TAB_LEN_SHIFT
                        | table
                        | (IntCtl::Remap as u64) << field::INT_CTL_SHIFT
                }
            };
        Ok(self)
    }

    /// Copies the firmware's pass-through and SysMgt settings (IVHD device entry).
    pub fn with_firmware_setting(mut self, setting: FirmwareSetting) -> Self {
        let s = setting.0;
        let bit = |n: u8, to: u64| if s & (1 << n) != 0 { to } else { 0 };
        self.0[2] |= bit(0, field::INIT_PASS)
            | bit(1, field::EINT_PASS)
            | bit(2, field::NMI_PASS)
            | bit(6, field::LINT0_PASS)
            | bit(7, field::LINT1_PASS);
        self.0[1] |= u64::from((s >> 4) & 0x3) << field::SYS_MGT_SHIFT;
        self
    }

    /// V: the entry is valid.
    pub fn valid(&self) -> bool {
        self.0[0] & field::V != 0
    }
    /// TV: its translation fields are valid.
    pub fn translation_valid(&self) -> bool {
        self.0[0] & field::TV != 0
    }
    /// Mode: the table's levels (0: no translation).
    pub fn mode(&self) -> u8 {
        ((self.0[0] & field::MODE_MASK) >> field::MODE_SHIFT) as u8
    }
    /// Page Table Root Pointer.
    pub fn root(&self) -> u64 {
        self.0[0] & field::ROOT_MASK
    }
    /// DomainID.
    pub fn domain(&self) -> u16 {
        (self.0[1] & field::DOMAIN_MASK) as u16
    }
    /// IR: reads allowed.
    pub fn readable(&self) -> bool {
        self.0[0] & field::IR != 0
    }
    /// IW: writes allowed.
    pub fn writable(&self) -> bool {
        self.0[0] & field::IW != 0
    }
    /// True when no DMA can pass: valid, translation valid, and either no permission
    /// or no table (Mode=0 with IR=IW=0).
    pub fn blocks_dma(&self) -> bool {
        self.valid() && self.translation_valid() && (!self.readable() && !self.writable())
    }
    /// IntCtl: 00b abort, 01b pass, 10b remap.
    pub fn int_ctl(&self) -> u8 {
        ((self.0[2] & field::INT_CTL_MASK) >> field::INT_CTL_SHIFT) as u8
    }
    /// Interrupt Table Root Pointer.
    pub fn interrupt_table(&self) -> u64 {
        self.0[2] & field::INT_ROOT_MASK
    }
    /// V, IV and IntCtl=Remap: the device's interrupts go through the
    /// table at [`Self::interrupt_table`] (§2.2.5).
    pub fn remaps_interrupts(&self) -> bool {
        self.valid() && self.0[2] & field::IV != 0 && self.int_ctl() == IntCtl::Remap as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_dte_golden() {
        // V (bit 0) + TV (bit 1), Mode 0, IR=IW=0; quad 2: IV=1, IntCtl=00b (abort).
        assert_eq!(Dte::blocked().0, [0x3, 0, 0x1, 0]);
        assert!(Dte::blocked().blocks_dma());
    }

    #[test]
    fn translated_dte_golden() {
        // Root 0x0123_4000, 3 levels (Mode=3 in 11:9 = 0x600), IR (61) + IW (62),
        // DomainID 7.
        let dte = Dte::translated(0x0123_4000, 3, 7, true, true).unwrap();
        assert_eq!(dte.0[0], 0x6000_0000_0123_4603);
        assert_eq!(dte.0[1], 7);
        assert_eq!(dte.0[2], 1);
        assert_eq!(dte.0[3], 0);
        assert_eq!((dte.mode(), dte.root(), dte.domain()), (3, 0x0123_4000, 7));
        assert!(!dte.blocks_dma());
        let read_only = Dte::translated(0x1000, 4, 1, true, false).unwrap();
        assert_eq!(read_only.0[0], 0x2000_0000_0000_1803);
    }

    #[test]
    fn identity_dte_golden() {
        // V, TV, Mode 0, IR (61) + IW (62); DomainID 9.
        let dte = Dte::identity(9);
        assert_eq!(dte.0, [0x6000_0000_0000_0003, 9, 1, 0]);
        assert!(!dte.blocks_dma() && dte.mode() == 0);
    }

    #[test]
    fn translated_dte_rejects_bad_fields() {
        assert_eq!(
            Dte::translated(0x1000, 0, 1, true, true),
            Err(DteError::BadMode(0))
        );
        assert_eq!(
            Dte::translated(0x1000, 7, 1, true, true),
            Err(DteError::BadMode(7))
        );
        assert_eq!(
            Dte::translated(0x1800, 3, 1, true, true),
            Err(DteError::BadPointer(0x1800))
        );
        assert_eq!(
            Dte::translated(1 << 52, 3, 1, true, true),
            Err(DteError::BadPointer(1 << 52))
        );
    }

    #[test]
    fn remapped_interrupts_golden() {
        // IV=1, IntTabLen=8 (bits 4:1 = 0x10), root 0x0456_7040, IntCtl=10b (bit 61).
        let dte = Dte::blocked()
            .with_interrupts(Interrupts::Remapped {
                table: 0x0456_7040,
                log2_len: 8,
            })
            .unwrap();
        assert_eq!(dte.0[2], 0x2000_0000_0456_7051);
        assert_eq!(dte.int_ctl(), IntCtl::Remap as u8);
        assert_eq!(dte.interrupt_table(), 0x0456_7040);
        let back = dte.with_interrupts(Interrupts::Blocked).unwrap();
        assert_eq!(back.0[2], 0x1);
        assert_eq!(
            Dte::blocked().with_interrupts(Interrupts::Remapped {
                table: 0x1020,
                log2_len: 1
            }),
            Err(DteError::BadPointer(0x1020))
        );
        assert_eq!(
            Dte::blocked().with_interrupts(Interrupts::Remapped {
                table: 0x1000,
                log2_len: 12
            }),
            Err(DteError::BadTableLength(12))
        );
    }

    #[test]
    fn remapped_interrupts_drop_every_pass_bit_and_blocking_keeps_them() {
        let passing = Dte::blocked().with_firmware_setting(FirmwareSetting(0xC7));
        let remapped = passing
            .with_interrupts(Interrupts::Remapped {
                table: 0x1000,
                log2_len: 1,
            })
            .unwrap();
        let passes = field::INIT_PASS
            | field::EINT_PASS
            | field::NMI_PASS
            | field::LINT0_PASS
            | field::LINT1_PASS;
        assert_eq!(passing.0[2] & passes, passes);
        assert_eq!(remapped.0[2] & passes, 0);
        let blocked = passing.with_interrupts(Interrupts::Blocked).unwrap();
        assert_eq!(blocked.0[2] & passes, passes);
    }

    #[test]
    fn firmware_setting_copies_pass_bits_and_sysmgt() {
        // All pass bits + SysMgt=11b.
        let dte = Dte::blocked().with_firmware_setting(FirmwareSetting(0xF7));
        assert_eq!(
            dte.0[2],
            0x1 | 0x0700_0000_0000_0000 | 0xC000_0000_0000_0000
        );
        assert_eq!(dte.0[1], 0x3 << 40);
        // A remapping update drops them (the interrupts are a task's now):
        // IntCtl=remapped, the table root and IV only.
        let remapped = dte
            .with_interrupts(Interrupts::Remapped {
                table: 0x2000,
                log2_len: 0,
            })
            .unwrap();
        assert_eq!(remapped.0[2], 0x2000_0000_0000_0000 | 0x2000 | 1);
    }
}
