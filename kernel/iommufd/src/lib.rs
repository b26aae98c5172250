//! Hardware-independent iommufd object model: IOAS, HWPT, devices, IOVA allocation, faults.
#![no_std]
