//! What the firmware says the machine has.

use crate::boot_info::BootInfo;

pub struct Platform {}

impl Platform {
    pub fn summary(&self) -> &'static str {
        "platform discovery pending"
    }
}

pub fn discover(_boot: &BootInfo) -> Result<Platform, &'static str> {
    Ok(Platform {})
}
