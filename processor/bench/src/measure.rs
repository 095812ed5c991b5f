//! Running one candidate on the loaded input: its drain speed, CPU and memory, then its
//! p99 latency under a steady live load.

use super::*;

/// utime+stime of a process in seconds, and its peak RSS in MiB.
pub(crate) fn usage(pid: u32, ticks: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / ticks, hwm_kb / 1024.0)
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) struct Measured {
    pub(crate) name: String,
    pub(crate) records_per_s: f64,
    pub(crate) cpu_s_per_million: f64,
    /// Not measured for `--pairs`.
    pub(crate) p99_ms: Option<f64>,
    pub(crate) peak_mib: f64,
}

pub(crate) struct Candidate {
    pub(crate) name: &'static str,
    pub(crate) group: String,
    pub(crate) command: Command,
}

pub(crate) fn run_candidate(
    args: &Args,
    input: &str,
    output: &str,
    mut cand: Candidate,
    ticks: f64,
) -> anyhow::Result<Measured> {
    eprintln!("== {}: draining {} records", cand.name, args.records);
    let log = std::env::temp_dir().join(format!("sluice-bench-{}.log", cand.group));
    let out = std::fs::File::create(&log)?;
    let mut child: Child = cand
        .command
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", cand.name))?;
    let pid = child.id();
    let watcher: BaseConsumer = client(&args.bootstrap).create()?;
    let started = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut last_change = Instant::now();
    let mut last_end = 0;
    let (cpu_end, mut drained_at) = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited early ({status}); log: {}",
                cand.name,
                log.display()
            );
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            bail!(
                "{} did not drain within 15 minutes; log: {}",
                cand.name,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let end = end_offsets(&watcher, output, args.partitions)?;
        if end > 0 && first.is_none() {
            first = Some((Instant::now(), usage(pid, ticks).0));
        }
        if end != last_end {
            last_end = end;
            last_change = Instant::now();
            continue;
        }
        if first.is_some()
            && last_change.elapsed() > Duration::from_millis(1500)
            && committed(&args.bootstrap, &cand.group, input, args.partitions)?
                >= args.records as i64
        {
            break (usage(pid, ticks).0, last_change);
        }
    };
    let (t_first, cpu_first) = first.context("no output")?;
    if drained_at <= t_first {
        drained_at = t_first + Duration::from_millis(1);
    }
    let secs = (drained_at - t_first).as_secs_f64();
    let records_per_s = args.records as f64 / secs;
    let cpu_s_per_million = (cpu_end - cpu_first) / args.records as f64 * 1e6;
    eprintln!("   {records_per_s:.0} records/s, {cpu_s_per_million:.2} CPU s per million records");

    // Pairs compare throughput only.
    let p99_ms = if args.pairs > 0 {
        None
    } else {
        eprintln!(
            "   latency: {} records at {}/s",
            args.latency_records, args.rate
        );
        Some(latency(args, input, output)?)
    };
    let (_, peak_mib) = usage(pid, ticks);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match p99_ms {
        Some(p99) => eprintln!("   p99 {p99:.1} ms, peak RSS {peak_mib:.0} MiB"),
        None => eprintln!("   peak RSS {peak_mib:.0} MiB"),
    }
    Ok(Measured {
        name: cand.name.to_string(),
        records_per_s,
        cpu_s_per_million,
        p99_ms,
        peak_mib,
    })
}

/// Produces a steady load and measures output time minus input CreateTime.
pub(crate) fn latency(args: &Args, input: &str, output: &str) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = client(&args.bootstrap)
        .set("group.id", format!("latency-{output}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        let hi = high_watermark(&consumer, output, p)?;
        tpl.add_partition_offset(output, p, Offset::Offset(hi))?;
    }
    consumer.assign(&tpl)?;
    // Let the consumer connect and start fetching before the load starts.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            bail!("reading {output}: {e}");
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    // Outputs of orders sent before the timed ones are left out.
    let timed_from = Arc::new(AtomicI64::new(i64::MAX));
    let producer = {
        let (b, t, from, n, rate, done, timed) = (
            args.bootstrap.clone(),
            input.to_string(),
            args.records,
            args.latency_records,
            args.rate,
            done.clone(),
            timed_from.clone(),
        );
        std::thread::spawn(move || {
            let r = produce(&b, &t, from * 10, from * 10 + n, Some(rate), Some(&timed));
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    let mut lat = Vec::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                quiet_since = None;
                if let Some(ts) = m.timestamp().to_millis()
                    && ts >= timed_from.load(Ordering::Acquire)
                {
                    lat.push((now_ms() - ts) as f64);
                }
            }
            Some(Err(e)) => bail!("reading {output}: {e}"),
            None => {
                if done.load(Ordering::Relaxed) {
                    let q = quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
            }
        }
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    if lat.is_empty() {
        bail!("no output during the latency phase");
    }
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "  latency ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0} ({} records)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        lat.len()
    );
    Ok(at(0.99))
}

/// Runs each candidate (those `--only` selects) on the loaded input, one after another.
pub(crate) fn run_all(
    args: &Args,
    input: &str,
    cands: Vec<(Candidate, String)>,
    ticks: f64,
) -> anyhow::Result<Vec<Measured>> {
    let mut results = Vec::new();
    for (cand, output) in cands {
        if args.pairs == 0
            && args
                .only
                .as_deref()
                .is_some_and(|o| !selected(o, cand.name))
        {
            continue;
        }
        create_topic(&args.bootstrap, &output, args.partitions)?;
        results.push(run_candidate(args, input, &output, cand, ticks)?);
    }
    Ok(results)
}
