//! `cargo xtask netns up|down|list`: a test network that outlives the command.

use anyhow::{bail, Result};
use clap::Subcommand;
use handshake_tests::netns::{self, Topology};

use crate::util;

#[derive(Subcommand)]
pub enum Action {
    /// Create two namespaces and a veth pair (198.18.0.0/24) and leave them up.
    Up {
        /// TX/RX queues on each veth end (1 to 64).
        #[arg(long, default_value_t = 1)]
        queues: u32,
        /// Do not put the kernel address 198.18.0.3 on the engine's veth.
        #[arg(long)]
        no_kernel_addr: bool,
    },
    /// Remove the networks made by `up` (or the one named by --id; --all: every hs-* network,
    /// including those of test runs still going).
    Down {
        /// Every hs-* namespace pair.
        #[arg(long)]
        all: bool,
        /// Just this one (e.g. d0).
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
    },
    /// List the hs-* networks.
    List,
}

pub fn run(action: Action) -> Result<()> {
    if !util::is_root() {
        bail!("network namespaces need root: run `sudo -E cargo xtask netns ...`");
    }
    match action {
        Action::Up {
            queues,
            no_kernel_addr,
        } => up(queues, !no_kernel_addr),
        Action::Down { all, id } => down(all, id),
        Action::List => {
            for id in netns::list()? {
                let kind = if netns::list_persistent()?.contains(&id) {
                    "persistent"
                } else {
                    "test run"
                };
                println!("{id}\t(hs-eng-{id}, hs-peer-{id}; {kind})");
            }
            Ok(())
        }
    }
}

fn up(queues: u32, kernel_addr: bool) -> Result<()> {
    for id in netns::cleanup_stale()? {
        println!("removed a leftover network of a finished run: {id}");
    }
    let topo = Topology::builder()
        .queues(queues)
        .kernel_address(kernel_addr)
        .persist(true)
        .up()?;
    println!("id           {}", topo.id());
    println!(
        "engine ns    {}   veth {}  mac {}",
        topo.eng_ns(),
        topo.eng_if(),
        netns::mac_string(topo.eng_mac())
    );
    println!(
        "peer ns      {}  veth {}  mac {}  addr {}/{}",
        topo.peer_ns(),
        topo.peer_if(),
        netns::mac_string(topo.peer_mac()),
        netns::PEER_ADDR,
        netns::PREFIX_LEN
    );
    if kernel_addr {
        println!(
            "kernel addr  {}/{} on {}",
            netns::KERNEL_ADDR,
            netns::PREFIX_LEN,
            topo.eng_if()
        );
    }
    println!("queues       {queues}");
    println!();
    println!("start the engine:  ip netns exec {} target/release/handshake run --iface {} --addr {}/{} --queues {queues}", topo.eng_ns(), topo.eng_if(), netns::ENGINE_ADDR, netns::PREFIX_LEN);
    println!(
        "talk to it:        ip netns exec {} ping {}",
        topo.peer_ns(),
        netns::ENGINE_ADDR
    );
    println!(
        "remove:            cargo xtask netns down --id {}",
        topo.id()
    );
    Ok(())
}

fn down(all: bool, id: Option<String>) -> Result<()> {
    let ids = match (all, id) {
        (true, _) => netns::list()?,
        (false, Some(id)) => vec![id],
        (false, None) => netns::list_persistent()?,
    };
    if ids.is_empty() {
        println!("no hs-* network to remove");
    }
    for id in ids {
        netns::remove(&id)?;
        println!("removed hs-eng-{id} and hs-peer-{id}");
    }
    Ok(())
}
