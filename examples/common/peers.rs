//! The Node.js peers in `benches/peers/` (BullMQ, bee-queue, redlock), run
//! from `loadgen` so that their figures come from the same run, against the
//! same server, as redswarm's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `benches/peers/run.sh`, or why the peers cannot run here.
pub fn script() -> Result<PathBuf, String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|out| out.status.success()) {
        return Err(
            "peers skipped: `node` is not on PATH (benches/peers needs Node.js 20+ and npm)".into(),
        );
    }
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/run.sh"))
}

/// The peers `run.sh --one <script_args>` measures, as (row label, extra
/// arguments): BullMQ and bee-queue for `queue.js`, redlock for `lock.js`.
pub fn libs(script_args: &str) -> &'static [(&'static str, &'static str)] {
    if script_args.starts_with("lock.js") {
        &[("redlock v5, one client per handle (Node.js)", "")]
    } else {
        &[
            ("BullMQ, one Node.js process (--peers)", "--lib bullmq"),
            ("bee-queue, one Node.js process (--peers)", "--lib bee"),
        ]
    }
}

/// Every peer scenario, `rounds` rounds each (timed ones `seconds` long),
/// against `url`; `run.sh` prints its own table. Says so and returns `Ok`
/// when `node` is missing.
pub fn run_all(url: &str, rounds: usize, seconds: f64) -> Result<(), Box<dyn std::error::Error>> {
    let script = match script() {
        Ok(script) => script,
        Err(why) => {
            println!("{why}");
            return Ok(());
        }
    };
    let status = Command::new(&script)
        .env("REDIS_URL", url)
        .env("ROUNDS", rounds.to_string())
        .env("ROUND_SECONDS", seconds.to_string())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", script.display()).into());
    }
    Ok(())
}

/// One round of `run.sh --one <args>` (`args`: `"queue.js --lib bee ..."`,
/// split on whitespace) against `url`: the `rate` of its JSON line.
pub fn rate(script: &Path, url: &str, args: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let out = Command::new(script)
        .arg("--one")
        .args(args.split_whitespace())
        .env("REDIS_URL", url)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("run.sh --one {args}: {}", out.status).into());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "run.sh --one {args} printed {:?}, not JSON: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    json["rate"]
        .as_f64()
        .ok_or_else(|| format!("run.sh --one {args}: no numeric \"rate\" in {json}").into())
}
