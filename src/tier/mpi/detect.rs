//! Was this process started by an MPI launcher? Read from the environment, never from `ps`.
//!
//! Listing 3 of the source article looked for `-m mpi4py.futures` in the output of `ps`. The
//! launchers tell each process its place in the job through environment variables instead,
//! which is cheap, portable and exact:
//!
//! | launcher | rank | size |
//! | --- | --- | --- |
//! | OpenMPI `mpiexec`/`mpirun` (ORTE, PRRTE) | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` |
//! | MPICH / Intel MPI (Hydra), `srun --mpi=pmi2` | `PMI_RANK` | `PMI_SIZE` |
//! | MVAPICH2 | `MV2_COMM_WORLD_RANK` | `MV2_COMM_WORLD_SIZE` |
//! | PMIx servers (OpenMPI 5, `srun --mpi=pmix`) | `PMIX_RANK` | (none: asked from MPI) |
//!
//! Slurm's own `SLURM_PROCID` is deliberately not read: plain `srun` sets it for jobs that are
//! not MPI at all.

// Public with the `mpi` feature (users ask how they were launched); without it only
// `RemotePool::auto` uses `detect`, and the rest is there for that feature.
#![cfg_attr(not(feature = "mpi"), allow(unreachable_pub, dead_code))]

use std::fmt;

/// Which launcher variables were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// OpenMPI's `OMPI_COMM_WORLD_*`.
    OpenMpi,
    /// The PMI-1/PMI-2 `PMI_*` variables (MPICH's Hydra, Intel MPI, Slurm with pmi2).
    Pmi,
    /// MVAPICH2's `MV2_COMM_WORLD_*`.
    Mvapich,
    /// Only `PMIX_RANK` (the size is learnt from MPI after initialisation).
    Pmix,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::OpenMpi => "OpenMPI",
            Launcher::Pmi => "PMI",
            Launcher::Mvapich => "MVAPICH2",
            Launcher::Pmix => "PMIx",
        })
    }
}

/// This process's place in an MPI job, as its launcher described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Which variables said so.
    pub launcher: Launcher,
    /// This process's rank in `MPI_COMM_WORLD`.
    pub rank: usize,
    /// The number of ranks, when the launcher exports it.
    pub size: Option<usize>,
}

impl Launch {
    /// Whether this job has workers besides rank 0 (`None`: unknown until MPI is initialised).
    pub fn has_workers(&self) -> Option<bool> {
        self.size.map(|s| s > 1)
    }

    /// Whether this process is rank 0, the one that runs the application.
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }
}

/// What the environment says about MPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// No launcher variables: a plain process (MPI would make it a singleton of size 1).
    NotLaunched,
    /// Started by an MPI launcher.
    Launched(Launch),
    /// A launcher variable holds something that is not a rank/size pair that makes sense; the
    /// process is treated as not launched, and this says why.
    Malformed {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

impl Detected {
    /// The launch, when there is a well-formed one.
    pub fn launch(&self) -> Option<Launch> {
        match self {
            Detected::Launched(l) => Some(*l),
            _ => None,
        }
    }
}

const PAIRS: [(Launcher, &str, Option<&str>); 4] = [
    (
        Launcher::OpenMpi,
        "OMPI_COMM_WORLD_RANK",
        Some("OMPI_COMM_WORLD_SIZE"),
    ),
    (Launcher::Pmi, "PMI_RANK", Some("PMI_SIZE")),
    (
        Launcher::Mvapich,
        "MV2_COMM_WORLD_RANK",
        Some("MV2_COMM_WORLD_SIZE"),
    ),
    (Launcher::Pmix, "PMIX_RANK", None),
];

/// Reads the launcher variables through `var` (a pure function of it, for tests); the first
/// launcher whose rank variable is set wins, in the order of the module table.
pub(crate) fn detect_with(var: impl Fn(&str) -> Option<String>) -> Detected {
    for (launcher, rank_var, size_var) in PAIRS {
        let Some(rank_text) = var(rank_var) else {
            continue;
        };
        let Ok(rank) = rank_text.trim().parse::<usize>() else {
            return Detected::Malformed {
                var: rank_var,
                value: rank_text,
            };
        };
        let size = match size_var {
            None => None,
            Some(size_var) => match var(size_var) {
                None => None,
                Some(text) => match text.trim().parse::<usize>() {
                    Ok(s) if s > rank => Some(s),
                    _ => {
                        return Detected::Malformed {
                            var: size_var,
                            value: text,
                        };
                    }
                },
            },
        };
        return Detected::Launched(Launch {
            launcher,
            rank,
            size,
        });
    }
    Detected::NotLaunched
}

/// Reads the launcher variables of this process.
pub fn detect() -> Detected {
    detect_with(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_set_is_not_launched() {
        assert_eq!(detect_with(env(&[])), Detected::NotLaunched);
        // Slurm alone is not MPI.
        assert_eq!(
            detect_with(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")])),
            Detected::NotLaunched
        );
    }

    #[test]
    fn openmpi_rank_and_size() {
        let d = detect_with(env(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
        ]));
        let l = d.launch().expect("launched");
        assert_eq!(l.launcher, Launcher::OpenMpi);
        assert_eq!((l.rank, l.size), (2, Some(3)));
        assert!(!l.is_master());
        assert_eq!(l.has_workers(), Some(true));
    }

    #[test]
    fn single_rank_has_no_workers() {
        let l = detect_with(env(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "1"),
        ]))
        .launch()
        .expect("launched");
        assert!(l.is_master());
        assert_eq!(l.has_workers(), Some(false));
    }

    #[test]
    fn pmi_and_mvapich() {
        let l = detect_with(env(&[("PMI_RANK", "0"), ("PMI_SIZE", "4")]))
            .launch()
            .expect("pmi");
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Pmi, 0, Some(4)));
        let l = detect_with(env(&[
            ("MV2_COMM_WORLD_RANK", "1"),
            ("MV2_COMM_WORLD_SIZE", "2"),
        ]))
        .launch()
        .expect("mvapich");
        assert_eq!(l.launcher, Launcher::Mvapich);
    }

    #[test]
    fn pmix_rank_without_size() {
        let l = detect_with(env(&[("PMIX_RANK", "0")]))
            .launch()
            .expect("pmix");
        assert_eq!(
            (l.launcher, l.size, l.has_workers()),
            (Launcher::Pmix, None, None)
        );
    }

    #[test]
    fn openmpi_wins_over_pmix() {
        // OpenMPI 5 exports both.
        let l = detect_with(env(&[
            ("PMIX_RANK", "1"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ]))
        .launch()
        .expect("launched");
        assert_eq!(l.launcher, Launcher::OpenMpi);
    }

    #[test]
    fn garbage_is_malformed_not_launched() {
        assert!(matches!(
            detect_with(env(&[("OMPI_COMM_WORLD_RANK", "x")])),
            Detected::Malformed {
                var: "OMPI_COMM_WORLD_RANK",
                ..
            }
        ));
        // A rank outside the size.
        assert!(matches!(
            detect_with(env(&[("PMI_RANK", "3"), ("PMI_SIZE", "3")])),
            Detected::Malformed {
                var: "PMI_SIZE",
                ..
            }
        ));
        assert_eq!(
            detect_with(env(&[("PMI_RANK", "3"), ("PMI_SIZE", "0")])).launch(),
            None
        );
    }
}
