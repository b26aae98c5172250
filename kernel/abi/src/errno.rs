//! Error codes with the numbers and meanings of Linux `errno` (asm-generic/errno*.h),
//! so that user code written against Linux iommufd reads them the same way.

/// An error returned to the task; the syscall returns its negated value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// The caller may not do this (device claimed by another task, kernel-only object).
    EPERM = 1,
    /// No such object, nothing mapped in the range, or the range cuts an area.
    ENOENT = 2,
    /// The hardware failed to complete (invalidation timeout).
    EIO = 5,
    /// The struct is longer than the kernel knows and its unknown tail is non-zero.
    E2BIG = 7,
    /// Out of memory.
    ENOMEM = 12,
    /// A user pointer is not readable/writable.
    EFAULT = 14,
    /// The object is referenced (attached devices, nested children, used IOAS).
    EBUSY = 16,
    /// The device cannot do this (`irq_wait` on a device without MSI).
    ENODEV = 19,
    /// The IOVA range overlaps an existing area.
    EEXIST = 17,
    /// Malformed argument: misaligned, empty, short struct, wrong object type.
    EINVAL = 22,
    /// No IOVA hole fits the request.
    ENOSPC = 28,
    /// No system call has this number.
    ENOSYS = 38,
    /// `iova + length` wraps.
    EOVERFLOW = 75,
    /// The caller's array is too small; the count needed is reported.
    EMSGSIZE = 90,
    /// Unknown flag, non-zero reserved field, or unsupported data type.
    EOPNOTSUPP = 95,
    /// The range intersects a reserved range, or an attach conflicts with areas
    /// or allowed ranges.
    EADDRINUSE = 98,
    /// `irq_wait`'s timeout passed without an interrupt.
    ETIMEDOUT = 110,
}

impl Errno {
    /// The value a syscall returns for this error (`-errno`, as Linux).
    pub const fn to_syscall_return(self) -> i64 {
        -(self as i32 as i64)
    }

    /// Decodes a negated syscall return; `None` for success values or unknown codes.
    pub fn from_syscall_return(value: i64) -> Option<Self> {
        let code = value.checked_neg()?;
        ALL.iter().copied().find(|e| *e as i32 as i64 == code)
    }
}

const ALL: [Errno; 17] = [
    Errno::EPERM,
    Errno::ENOENT,
    Errno::EIO,
    Errno::E2BIG,
    Errno::ENOMEM,
    Errno::EFAULT,
    Errno::EBUSY,
    Errno::ENODEV,
    Errno::EEXIST,
    Errno::EINVAL,
    Errno::ENOSPC,
    Errno::ENOSYS,
    Errno::EOVERFLOW,
    Errno::EMSGSIZE,
    Errno::EOPNOTSUPP,
    Errno::EADDRINUSE,
    Errno::ETIMEDOUT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_match_linux() {
        assert_eq!(Errno::EPERM as i32, 1);
        assert_eq!(Errno::ENOENT as i32, 2);
        assert_eq!(Errno::E2BIG as i32, 7);
        assert_eq!(Errno::ENOMEM as i32, 12);
        assert_eq!(Errno::EFAULT as i32, 14);
        assert_eq!(Errno::EBUSY as i32, 16);
        assert_eq!(Errno::EEXIST as i32, 17);
        assert_eq!(Errno::EINVAL as i32, 22);
        assert_eq!(Errno::ENOSPC as i32, 28);
        assert_eq!(Errno::EOVERFLOW as i32, 75);
        assert_eq!(Errno::EMSGSIZE as i32, 90);
        assert_eq!(Errno::EOPNOTSUPP as i32, 95);
        assert_eq!(Errno::EADDRINUSE as i32, 98);
        assert_eq!(Errno::ENODEV as i32, 19);
        assert_eq!(Errno::ETIMEDOUT as i32, 110);
    }

    #[test]
    fn errno_round_trips_through_syscall_return() {
        for e in ALL {
            assert_eq!(Errno::from_syscall_return(e.to_syscall_return()), Some(e));
        }
        assert_eq!(Errno::from_syscall_return(0), None);
        assert_eq!(Errno::from_syscall_return(-4), None);
        assert_eq!(Errno::from_syscall_return(i64::MIN), None);
    }
}
