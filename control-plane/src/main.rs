//! `dllm-control-plane`: a replica (the same as `dllm control-plane`).

/// jemalloc instead of glibc's malloc: replica CPU per write 7% lower at 64 clients on the
/// benchmark VM (allocation-heavy request handling), same RSS (BENCHMARKS.md, item 10).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    dllm_control_plane::entry::exit_from("dllm-control-plane", std::env::args_os())
}
