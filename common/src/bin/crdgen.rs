//! Writes the Prefetch CRD generated from the Rust types (`make crd`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", prefetch_common::crd::prefetch_crd_yaml()?);
    Ok(())
}
