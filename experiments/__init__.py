"""Vision Suite's command line: runs, sweeps, paper tables and launchers around LightningCLI."""
