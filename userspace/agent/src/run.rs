//! The agent's main loop.

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use weir_datapath::{
    ct::{monotonic_ns, Conntrack},
    PinLayout, PodDatapath,
};

use crate::{args::Args, links::LinkWatcher, pods::PodInterfaces, source::SourceSpec};

pub async fn run(args: Args) -> anyhow::Result<()> {
    let layout = PinLayout::new(&args.bpffs);
    if args.cleanup {
        layout.remove_all()?;
        tracing::info!(bpffs = %args.bpffs.display(), "removed all pins; weir's programs are detached");
        return Ok(());
    }

    match &args.source {
        SourceSpec::Dir(dir) => {
            if !dir.is_dir() {
                anyhow::bail!("--source dir:{}: not a directory", dir.display());
            }
            tracing::info!(dir = %dir.display(), "standalone source (object loading arrives with the control plane)");
        }
        SourceSpec::Kube => {
            anyhow::bail!("--source kube is not available in this build yet; use --source dir:<DIR>");
        }
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut dp = PodDatapath::load(&layout).context("loading the pod datapath")?;
    dp.set_config(&args.datapath_config()).context("writing the datapath configuration")?;
    let mut ct = Conntrack::open(&layout).context("opening conntrack")?;
    let mut gc_tick = tokio::time::interval(std::time::Duration::from_secs(args.ct_gc_interval.max(1)));
    let mut pods = PodInterfaces::new(dp);

    let mut watcher = LinkWatcher::subscribe().context("subscribing to rtnetlink link events")?;
    let existing = watcher.dump().await.context("listing links")?;
    pods.prune_missing(&existing);
    for ev in &existing {
        pods.apply(ev);
    }
    tracing::info!(bpffs = %args.bpffs.display(), node = ?args.node_name, "weir-agent ready");

    loop {
        tokio::select! {
            ev = watcher.next() => match ev {
                Some(ev) => pods.apply(&ev),
                None => anyhow::bail!("rtnetlink connection closed"),
            },
            _ = gc_tick.tick() => {
                let n = ct.gc(monotonic_ns());
                if n > 0 {
                    tracing::debug!(deleted = n, "conntrack gc");
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: exiting, pins stay in place");
                return Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: exiting, pins stay in place");
                return Ok(());
            }
        }
    }
}
