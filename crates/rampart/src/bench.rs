use clap::Subcommand;
#[derive(Subcommand)]
pub enum BenchCommand {
    Ledger,
}
pub async fn run(_c: BenchCommand, _config: crate::config::Config) -> anyhow::Result<()> {
    Ok(())
}
