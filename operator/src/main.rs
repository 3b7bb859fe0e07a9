//! `trellis-operator`: the Trellis control plane.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = trellis_operator::app::Config::parse();
    let filter =
        trellis_operator::app::log_filter(config.log.as_deref(), std::env::var_os(trellis_operator::app::RUST_LOG))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    rustls::crypto::ring::default_provider().install_default().ok();
    trellis_operator::app::run(config).await
}
