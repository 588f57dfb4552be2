//! Thin binary: parse the command line and hand over to the library.

/// mimalloc instead of glibc malloc: the engine allocates small, short-lived buffers on every
/// frame, statement and event, and glibc spent about a fifth of the engine's CPU on them
/// (docs/benchmarks.md, "The write path, fourth round"). Set here, not in the library, so
/// a program embedding the library keeps its own choice.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    arreglame::cli::main().await
}
