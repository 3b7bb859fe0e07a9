//! `meshctl`: install, validate, diagnose and inspect a Trellis mesh.

fn main() -> std::process::ExitCode {
    meshctl::main(std::env::args_os())
}
