//! The README's configuration reference matches the binaries: every flag and environment
//! variable each binary's `--help` lists is documented, and nothing documented is gone.

use std::process::Command;

use dllm_tests::binary;

/// (flag, env var) pairs from a binary's `--help`.
fn flags(name: &str) -> Vec<(String, String)> {
    let out = Command::new(binary(name))
        .arg("--help")
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = help.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        let Some(rest) = t.strip_prefix("--") else {
            continue;
        };
        let flag = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if flag == "help" || flag == "version" {
            continue;
        }
        let desc = lines.get(i + 1).copied().unwrap_or_default();
        let env = desc
            .split("[env: ")
            .nth(1)
            .and_then(|e| e.split(['=', ']']).next())
            .unwrap_or_default()
            .to_string();
        found.push((flag, env));
    }
    found
}

fn reference(readme: &str, heading: &str) -> String {
    let start = readme
        .find("## Configuration reference")
        .expect("a configuration reference");
    let section = &readme[start..];
    let from = section
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in the reference"));
    let rest = &section[from..];
    let end = rest[heading.len()..]
        .find("`:\n")
        .map_or(rest.len(), |e| e + heading.len());
    rest[..end].to_string()
}

#[test]
fn readme_documents_every_flag() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    for name in ["dllm-control-plane", "dllm-worker"] {
        let section = reference(&readme, &format!("`{name}`:"));
        let listed = flags(name);
        assert!(
            listed.len() > 5,
            "{name} --help lists its flags: {listed:?}"
        );
        for (flag, env) in &listed {
            assert!(
                section.contains(&format!("`--{flag}`")),
                "README does not document {name} --{flag}"
            );
            assert!(
                section.contains(&format!("`{env}`")),
                "README does not document {name} {env}"
            );
        }
        let documented = section.matches("| `--").count();
        assert_eq!(
            documented,
            listed.len(),
            "{name}: README documents flags that no longer exist"
        );
    }
}

/// README's test command is the script `.ci/run` runs, and the script installs what the
/// tests need before it runs them (a fresh machine has only the Rust toolchain).
#[test]
fn readme_test_command_is_what_ci_runs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let read = |f: &str| std::fs::read_to_string(format!("{root}/{f}")).expect(f);
    let readme = read("README.md");
    let block = readme
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README's first code block");
    let commands: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(commands.len(), 2, "run and test: {commands:?}");
    assert_eq!(commands[1], "bash scripts/test.sh");
    assert!(read(".ci/run").contains("bash scripts/test.sh"));
    let script = read("scripts/test.sh");
    for tool in ["tmux", "nft", "ip", "promtool", "apt-get install"] {
        assert!(script.contains(tool), "scripts/test.sh installs {tool}");
    }
    assert!(script.contains("cargo test --workspace"));
}
