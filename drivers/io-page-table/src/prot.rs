//! Access permissions and memory attributes of a mapping, format independent.

bitflags::bitflags! {
    /// What a device may do through a mapping and how the memory behind it is typed.
    ///
    /// Every mapping needs `READ` or `WRITE`. A format that cannot express a
    /// permission grants the nearest superset (x86-64 and ARM stage 1 have no
    /// write-only pages, so `WRITE` alone maps read-write), as Linux does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// Device reads allowed.
        const READ = 1 << 0;
        /// Device writes allowed.
        const WRITE = 1 << 1;
        /// Instruction fetches forbidden (x86-64 NX, ARM XN) where the format has the bit.
        const NOEXEC = 1 << 2;
        /// Cacheable, coherent memory: VT-d SNP (if enabled), AMD-Vi FC, ARM Normal
        /// write-back inner-shareable.
        const CACHE = 1 << 3;
        /// Device (MMIO) memory such as an MSI doorbell: ARM Device-nGnRE, x86-64 UC.
        const MMIO = 1 << 4;
    }
}

impl Prot {
    /// Read and write.
    pub const RW: Prot = Prot::READ.union(Prot::WRITE);
}
