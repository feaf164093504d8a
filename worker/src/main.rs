//! `dllm-worker`: a worker agent (the same as `dllm worker`).

fn main() -> anyhow::Result<()> {
    dllm_worker::entry::main_from("dllm-worker", std::env::args_os())
}
