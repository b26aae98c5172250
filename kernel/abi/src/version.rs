//! The size-versioning rule of every struct that crosses the boundary (as Linux
//! iommufd's `ucmd` handling): the struct starts with `size`, the bytes the caller
//! really passes.
//!
//! - shorter than the mandatory part → `EINVAL`;
//! - longer than the kernel's struct with a non-zero byte in the unknown tail → `E2BIG`
//!   (a zero tail is accepted, so old kernels run new programs that do not use the
//!   new fields), and longer than a page ([`MAX_SIZE`]) → `E2BIG` whatever the tail;
//! - unknown flags or non-zero reserved fields → `EOPNOTSUPP` (checked by
//!   [`AbiStruct::validate`]);
//! - copy-out to a shorter buffer writes a prefix, to a longer one zeroes the tail.

use crate::Errno;
use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Plain old data: no padding (every byte of a value is initialised, so it can
/// be copied out) and every bit pattern a valid value (so any bytes can be
/// copied in). The `zerocopy` derives on each struct prove both at compile
/// time; this names the combination.
pub trait Pod: IntoBytes + FromBytes + Immutable + Copy + 'static {}

impl<T: IntoBytes + FromBytes + Immutable + Copy + 'static> Pod for T {}

/// Views a `Pod` value as its bytes.
pub fn as_bytes<T: Pod>(value: &T) -> &[u8] {
    value.as_bytes()
}

/// An argument or element struct with its version rule.
pub trait AbiStruct: Pod {
    /// Bytes of the mandatory part (the first published version of the struct).
    const MIN_SIZE: usize = size_of::<Self>();

    /// Rejects unknown flags and non-zero reserved fields with `EOPNOTSUPP`.
    fn validate(&self) -> Result<(), Errno> {
        Ok(())
    }
}

/// Decodes an element of length `raw.len()` (array entries whose length the
/// caller passes separately), applying the size rule and `validate`.
pub fn decode<T: AbiStruct>(raw: &[u8]) -> Result<T, Errno> {
    if raw.len() < T::MIN_SIZE {
        return Err(Errno::EINVAL);
    }
    let known = raw.len().min(size_of::<T>());
    if raw[known..].iter().any(|b| *b != 0) {
        return Err(Errno::E2BIG);
    }
    // Zeroes, then the bytes the caller passed: any bytes are a valid `T: Pod`.
    let mut value = T::new_zeroed();
    value.as_mut_bytes()[..known].copy_from_slice(&raw[..known]);
    value.validate()?;
    Ok(value)
}

/// The most bytes any struct may claim in its `size`: a page (`E2BIG` past
/// it, as Linux's `copy_struct_from_user` callers cap theirs: `sched_setattr`,
/// `perf_event_open`, `clone3`). Without a cap a zero tail of any length must
/// be read and checked, and one call could keep the CPU as long as it likes.
pub const MAX_SIZE: u32 = 4096;

/// The size rule's bounds for struct `T`: `EINVAL` below its mandatory part,
/// `E2BIG` above [`MAX_SIZE`].
pub fn check_size<T: AbiStruct>(size: u32) -> Result<(), Errno> {
    if (size as usize) < T::MIN_SIZE {
        Err(Errno::EINVAL)
    } else if size > MAX_SIZE {
        Err(Errno::E2BIG)
    } else {
        Ok(())
    }
}

/// Decodes a struct whose first `u32` is its `size`; `raw` holds the bytes the
/// kernel copied from the task, which must be exactly `size` bytes.
pub fn copy_in<T: AbiStruct>(raw: &[u8]) -> Result<T, Errno> {
    let size = read_size(raw)?;
    if size as usize != raw.len() {
        return Err(Errno::EINVAL);
    }
    decode(raw)
}

/// The leading `size` field of a raw argument (`EINVAL` when not even that fits).
pub fn read_size(raw: &[u8]) -> Result<u32, Errno> {
    let head: [u8; 4] = raw
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(Errno::EINVAL)?;
    Ok(u32::from_ne_bytes(head))
}

/// Writes `value` into a caller buffer of any length: a prefix when shorter, the
/// whole struct and a zeroed tail when longer. Returns the bytes of `value` written.
pub fn copy_out<T: Pod>(value: &T, out: &mut [u8]) -> usize {
    copy_out_bytes(as_bytes(value), out)
}

/// [`copy_out`] for data already in bytes (raw hardware-info blobs).
pub fn copy_out_bytes(data: &[u8], out: &mut [u8]) -> usize {
    let n = data.len().min(out.len());
    out[..n].copy_from_slice(&data[..n]);
    out[n..].fill(0);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        Eq,
        Default,
        IntoBytes,
        FromBytes,
        Immutable,
        zerocopy::KnownLayout,
    )]
    #[repr(C)]
    struct Probe {
        size: u32,
        flags: u32,
        value: u64,
    }
    const _: () = assert!(size_of::<Probe>() == 16);
    impl AbiStruct for Probe {
        const MIN_SIZE: usize = 8;
        fn validate(&self) -> Result<(), Errno> {
            if self.flags & !1 != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            Ok(())
        }
    }

    fn raw(size: u32, flags: u32, value: u64, tail: &[u8]) -> std::vec::Vec<u8> {
        let mut v = std::vec::Vec::new();
        v.extend_from_slice(&size.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&value.to_ne_bytes());
        v.extend_from_slice(tail);
        v.truncate(size as usize);
        v
    }

    #[test]
    fn abi_size_rule_exact_size_decodes() {
        let p: Probe = copy_in(&raw(16, 1, 7, &[])).unwrap();
        assert_eq!(
            p,
            Probe {
                size: 16,
                flags: 1,
                value: 7
            }
        );
    }

    #[test]
    fn abi_size_rule_shorter_than_mandatory_is_einval() {
        assert_eq!(copy_in::<Probe>(&raw(4, 0, 0, &[])), Err(Errno::EINVAL));
        assert_eq!(copy_in::<Probe>(&[1, 0]), Err(Errno::EINVAL));
    }

    #[test]
    fn abi_size_rule_mandatory_prefix_zero_fills_new_fields() {
        let p: Probe = copy_in(&raw(8, 1, 99, &[])).unwrap();
        assert_eq!(
            p,
            Probe {
                size: 8,
                flags: 1,
                value: 0
            }
        );
    }

    #[test]
    fn abi_size_rule_longer_with_zero_tail_is_accepted() {
        let p: Probe = copy_in(&raw(24, 0, 5, &[0; 8])).unwrap();
        assert_eq!(p.value, 5);
    }

    #[test]
    fn abi_size_rule_longer_with_nonzero_tail_is_e2big() {
        assert_eq!(
            copy_in::<Probe>(&raw(24, 0, 5, &[0, 0, 0, 1, 0, 0, 0, 0])),
            Err(Errno::E2BIG)
        );
    }

    #[test]
    fn abi_size_rule_unknown_flags_are_eopnotsupp() {
        assert_eq!(
            copy_in::<Probe>(&raw(16, 2, 0, &[])),
            Err(Errno::EOPNOTSUPP)
        );
    }

    #[test]
    fn abi_size_rule_size_field_must_match_bytes() {
        let mut r = raw(16, 0, 0, &[]);
        r.push(0);
        assert_eq!(copy_in::<Probe>(&r), Err(Errno::EINVAL));
    }

    #[test]
    fn abi_copy_out_shorter_buffer_gets_prefix() {
        let p = Probe {
            size: 16,
            flags: 1,
            value: 0x1122,
        };
        let mut out = [0xAAu8; 6];
        assert_eq!(copy_out(&p, &mut out), 6);
        assert_eq!(out, as_bytes(&p)[..6]);
    }

    #[test]
    fn abi_copy_out_longer_buffer_has_tail_zeroed() {
        let p = Probe {
            size: 16,
            flags: 1,
            value: 0x1122,
        };
        let mut out = [0xAAu8; 24];
        assert_eq!(copy_out(&p, &mut out), 16);
        assert_eq!(&out[..16], as_bytes(&p));
        assert_eq!(&out[16..], &[0u8; 8]);
    }
}
