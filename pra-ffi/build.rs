//! The shared library's soname is `libpra.so`, the name C users link (`-lpra`), whatever cargo
//! calls its output (`libpra_ffi.so`, copied to `libpra.so` by `make libpra`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpra.so");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
