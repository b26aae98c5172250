//! Maps and unmaps pages of its own memory in an IOAS of its own, round
//! after round at IOVAs the kernel chooses, and checks every answer against
//! a model of what it mapped: no two live mappings overlap, each unmap
//! takes exactly what was mapped, an unmapped range is gone, and at the end
//! nothing but the model's mappings is left. The SMP test runs four at once
//! on four CPUs (issue 20), so the iommufd core serves them concurrently.
//!
//! The argument is the number of rounds (0: [`DEFAULT_ROUNDS`]). Exit code 0
//! = every check held, otherwise the number of the step that failed.
#![no_std]
#![no_main]

use user_programs::abi::Errno;
use user_programs::iommu::{destroy, ioas_alloc, ioas_map, ioas_unmap};
use user_programs::{Steps, argument, entry, mem_alloc, now_ns, println};

entry!(main);

const STEPS: Steps = Steps("ioas-churn");

const PAGE: u64 = 4096;
/// Pages of memory the task maps, one mapping slot each.
const SLOTS: usize = 8;
const DEFAULT_ROUNDS: u64 = 400;

/// xorshift64: which slot each round touches.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn overlaps(a: u64, b: u64) -> bool {
    a < b + PAGE && b < a + PAGE
}

fn run() -> Result<u64, i32> {
    let rounds = match argument() {
        0 => DEFAULT_ROUNDS,
        rounds => rounds,
    };
    let ioas = STEPS.check(1, "ioas_alloc", ioas_alloc())?;
    let memory = STEPS.check(2, "mem_alloc", mem_alloc(SLOTS))? as u64;
    let mut model: [Option<u64>; SLOTS] = [None; SLOTS];
    let mut random = Random(now_ns() | 1);
    let mut operations = 0;
    for _ in 0..rounds {
        let slot = (random.next() % SLOTS as u64) as usize;
        match model[slot] {
            None => {
                let va = memory + slot as u64 * PAGE;
                let iova = STEPS.check(3, "ioas_map", ioas_map(ioas, va, PAGE, None))?;
                if model.iter().flatten().any(|&other| overlaps(other, iova)) {
                    println!("ioas-churn: IOVA {iova:#x} given twice");
                    return Err(4);
                }
                model[slot] = Some(iova);
            }
            Some(iova) => {
                let length = STEPS.check(5, "ioas_unmap", ioas_unmap(ioas, iova, PAGE))?;
                if length != PAGE {
                    println!("ioas-churn: unmap of {iova:#x} took {length:#x} bytes");
                    return Err(6);
                }
                if ioas_unmap(ioas, iova, PAGE) != Err(Errno::ENOENT) {
                    println!("ioas-churn: {iova:#x} still mapped after its unmap");
                    return Err(7);
                }
                model[slot] = None;
            }
        }
        operations += 1;
    }
    // What is left is exactly the model: each of its mappings unmaps whole,
    // after which the IOAS is empty.
    for iova in model.iter().flatten() {
        let length = STEPS.check(8, "final unmap", ioas_unmap(ioas, *iova, PAGE))?;
        if length != PAGE {
            return Err(9);
        }
    }
    // Unmapping everything from an empty IOAS takes nothing and succeeds
    // (Linux `iopt_unmap_all`).
    if ioas_unmap(ioas, 0, u64::MAX) != Ok(0) {
        println!("ioas-churn: mappings left that the model does not know");
        return Err(10);
    }
    STEPS.check(11, "destroy", destroy(ioas))?;
    Ok(operations)
}

fn main() -> i32 {
    match run() {
        Ok(operations) => {
            println!("ioas-churn: {operations} operations matched the model");
            0
        }
        Err(step) => step,
    }
}
