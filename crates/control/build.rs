fn main() {
    // Migrations are embedded at compile time; a new or changed file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
}
