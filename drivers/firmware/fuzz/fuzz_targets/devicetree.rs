//! Any bytes as a DTB: the parser must return, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(platform) = firmware::devicetree::Platform::parse(data) {
        // Exercise the lookups the kernel makes on an accepted tree.
        for host in &platform.pcie {
            for rid in [0u16, 8, 0x10, 0xffff] {
                let _ = host.iommu_for_rid(rid);
                let _ = host.msi_for_rid(rid);
            }
        }
    }
});
