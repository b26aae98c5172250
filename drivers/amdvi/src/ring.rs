//! Head/tail arithmetic of the command buffer (§2.4) and the event log (§2.5): rings of
//! 16-byte entries, 2^n entries (n in 8..=15), pointers are byte offsets (§3.4.9,
//! §3.4.10). The ring is full when advancing the producer would make it equal to the
//! consumer, so one slot always stays empty.

/// Every command and event entry is 128 bits.
pub const ENTRY_SIZE: u32 = 16;

/// A ring's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    log2_entries: u32,
}

/// A pointer register held a value that cannot be a ring position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPointer(pub u64);

impl Ring {
    pub const fn new(log2_entries: u32) -> Self {
        Self { log2_entries }
    }

    pub const fn entries(&self) -> u32 {
        1 << self.log2_entries
    }

    pub const fn bytes(&self) -> u32 {
        self.entries() * ENTRY_SIZE
    }

    pub const fn log2_entries(&self) -> u32 {
        self.log2_entries
    }

    /// The entry index of a pointer register value. A value equal to the ring size is
    /// accepted as 0: QEMU 10.0.2 writes COMMAND_HEAD before wrapping it.
    pub fn index(&self, pointer: u64) -> Result<u32, BadPointer> {
        if !pointer.is_multiple_of(u64::from(ENTRY_SIZE)) || pointer > u64::from(self.bytes()) {
            return Err(BadPointer(pointer));
        }
        Ok((pointer / u64::from(ENTRY_SIZE)) as u32 % self.entries())
    }

    /// The pointer register value of entry `index`.
    pub fn pointer(&self, index: u32) -> u64 {
        u64::from(index % self.entries()) * u64::from(ENTRY_SIZE)
    }

    pub fn next(&self, index: u32) -> u32 {
        (index + 1) % self.entries()
    }

    /// Entries written by the producer and not yet consumed.
    pub fn used(&self, head: u32, tail: u32) -> u32 {
        (tail + self.entries() - head) % self.entries()
    }

    /// Entries the producer may still write (one slot always stays empty).
    pub fn free(&self, head: u32, tail: u32) -> u32 {
        self.entries() - 1 - self.used(head, tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_wrap_and_one_slot_stays_free() {
        let ring = Ring::new(8);
        assert_eq!((ring.entries(), ring.bytes()), (256, 4096));
        assert_eq!(ring.next(255), 0);
        assert_eq!(ring.used(250, 4), 10);
        assert_eq!(ring.free(250, 4), 245);
        assert_eq!(ring.free(0, 255), 0);
        assert_eq!(ring.free(7, 7), 255);
        assert_eq!(ring.index(0x20), Ok(2));
        assert_eq!(ring.index(4096), Ok(0));
        assert_eq!(ring.index(4112), Err(BadPointer(4112)));
        assert_eq!(ring.index(0x21), Err(BadPointer(0x21)));
        assert_eq!(ring.pointer(256), 0);
    }
}
