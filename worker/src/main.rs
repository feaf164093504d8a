//! `dllm-worker`: a worker agent (the same as `dllm worker`).

fn main() -> std::process::ExitCode {
    dllm_worker::entry::exit_from("dllm-worker", std::env::args_os())
}
