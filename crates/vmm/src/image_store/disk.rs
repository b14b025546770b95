//! A job's disk as `qemu-img` reads it: its format given, never probed,
//! its backing file the recorded one, and what flattening it takes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use sd_site::DiskFormat;

use super::error::StoreError;

/// A job's disk to save: where it is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskToSave {
    /// A qcow2 overlay, a raw file, or a block device (an LVM snapshot).
    pub path: PathBuf,
    /// How it is read: `Qcow2` (over its backing chain) or `Raw` (`Lvm` is
    /// read as `Raw`). Always given, never probed: a guest could have
    /// written a qcow2 header into a raw disk.
    pub format: DiskFormat,
    /// Bytes its data takes, when the caller knows better than `qemu-img
    /// info` (which sees no allocation on a block device): the free-space
    /// check wants at least this much in the store.
    pub allocated: Option<u64>,
    /// The qcow2 file a qcow2 overlay was made on, as recorded when it was
    /// made. Read in place of the backing file the overlay's header names:
    /// QEMU (and so a guest that escaped into it) can rewrite that header,
    /// and root would then copy any host file into the saved image.
    /// `None` for a qcow2: the header is trusted ([`DiskToSave::file`]).
    pub backing: Option<PathBuf>,
}

impl DiskToSave {
    /// A disk file whose qcow2 header is trusted (tests, tools; never a
    /// disk a guest could write to): `*.raw` is raw, anything else a qcow2
    /// over the backing file its header names.
    pub fn file(path: &Path) -> DiskToSave {
        let format = if path.extension().is_some_and(|e| e == "raw") {
            DiskFormat::Raw
        } else {
            DiskFormat::Qcow2
        };
        DiskToSave {
            path: path.to_path_buf(),
            format,
            allocated: None,
            backing: None,
        }
    }

    /// How qemu-img is to read it: `-f FORMAT PATH`, or for a qcow2 overlay
    /// with a recorded backing file, `--image-opts` naming that file (the
    /// header's backing name is not opened).
    pub(super) fn source_args(&self) -> Result<Vec<std::ffi::OsString>, StoreError> {
        let format = self.format.qemu_format();
        if self.format == DiskFormat::Qcow2 {
            check_qcow2_header(&self.path)?;
        }
        match (&self.backing, self.format) {
            (Some(backing), DiskFormat::Qcow2) => {
                check_qcow2_header(backing)?;
                let mut opts =
                    std::ffi::OsString::from("driver=qcow2,file.driver=file,file.filename=");
                opts.push(escape_opt(&self.path));
                opts.push(",backing.driver=qcow2,backing.file.driver=file,backing.file.filename=");
                opts.push(escape_opt(backing));
                Ok(vec!["--image-opts".into(), opts])
            }
            _ => Ok(vec!["-f".into(), format.into(), self.path.clone().into()]),
        }
    }
}

impl DiskToSave {
    /// What flattening it takes on disk at most: the overlay and its
    /// backing chain (qemu-img fails here on an overlay a running QEMU
    /// holds).
    pub(super) fn space_needed(&self, source: &[std::ffi::OsString]) -> Result<u64, StoreError> {
        let overlay = self.path.as_path();
        Ok(match (self.allocated, &self.backing) {
            (Some(n), _) => n,
            // `qemu-img info` walks the chain by the header's names: measure
            // what the flattened copy needs instead, over the recorded base.
            (None, Some(_)) => measured_size(overlay, source)?,
            (None, None) => allocated_size_of_chain(overlay, source)?,
        })
    }
}

/// A path as a value in QEMU's `key=value,...` option syntax (`,` doubled).
pub(super) fn escape_opt(path: &Path) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Refuses a qcow2 whose header asks for an external data file (the
/// `data_file` incompatible feature, bit 2): qemu-img would read the file
/// the header names, which the guest's QEMU may have chosen.
pub(super) fn check_qcow2_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let bad = |stderr: String| StoreError::QemuImg {
        action: "read",
        path: path.to_path_buf(),
        stderr,
    };
    let mut header = [0u8; 80];
    let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("no qcow2 header: {e}")))?;
    if &header[0..4] != b"QFI\xfb" {
        return Err(bad("not a qcow2 file".into()));
    }
    let version = u32::from_be_bytes(header[4..8].try_into().unwrap());
    if version >= 3 {
        let incompatible = u64::from_be_bytes(header[72..80].try_into().unwrap());
        if incompatible & (1 << 2) != 0 {
            return Err(bad(
                "its header asks for an external data file; not read (a job's disk never has one)"
                    .into(),
            ));
        }
    }
    Ok(())
}

pub(super) fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<std::process::Output, StoreError> {
    Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(StoreError::Tool)
}

pub(super) fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `qemu-img COMMAND... --output=json SOURCE...` of the disk at `overlay`,
/// parsed; an error names the disk.
pub(super) fn qemu_img_json(
    overlay: &Path,
    command: &[&str],
    source: &[std::ffi::OsString],
) -> Result<serde_json::Value, StoreError> {
    let mut args: Vec<&std::ffi::OsStr> = command.iter().map(|a| a.as_ref()).collect();
    args.push("--output=json".as_ref());
    args.extend(source.iter().map(|a| a.as_os_str()));
    let out = qemu_img(&args)?;
    let failed = |stderr: String| StoreError::QemuImg {
        action: "read",
        path: overlay.to_path_buf(),
        stderr,
    };
    if !out.status.success() {
        return Err(failed(stderr_of(&out)));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("unexpected `qemu-img {}` output: {e}", command[0])))
}

pub(super) fn unexpected(overlay: &Path, what: &str) -> StoreError {
    StoreError::QemuImg {
        action: "read",
        path: overlay.to_path_buf(),
        stderr: format!("unexpected `qemu-img` output: {what}"),
    }
}

/// Bytes the overlay and every file of its backing chain (as its header
/// names them) take on disk.
pub(super) fn allocated_size_of_chain(
    overlay: &Path,
    source: &[std::ffi::OsString],
) -> Result<u64, StoreError> {
    let chain = qemu_img_json(overlay, &["info", "--backing-chain"], source)?;
    let images = chain
        .as_array()
        .ok_or_else(|| unexpected(overlay, "not a list"))?;
    Ok(images
        .iter()
        .map(|image| match image["actual-size"].as_u64() {
            Some(s) => s,
            // No allocation figure (some protocols): the whole virtual size.
            None => image["virtual-size"].as_u64().unwrap_or(0),
        })
        .fold(0u64, u64::saturating_add))
}

/// Bytes a standalone qcow2 of `source` needs (`qemu-img measure`).
pub(super) fn measured_size(
    overlay: &Path,
    source: &[std::ffi::OsString],
) -> Result<u64, StoreError> {
    qemu_img_json(overlay, &["measure", "-O", "qcow2"], source)?["required"]
        .as_u64()
        .ok_or_else(|| unexpected(overlay, "no \"required\""))
}

/// `qemu-img convert -O qcow2`: the overlay (read as `source` says: its
/// format given, never probed, since a guest could have written a qcow2
/// header into a raw disk; its backing file the recorded one) and its
/// backing chain as one standalone qcow2 (zero clusters left out).
pub(super) fn flatten(
    overlay: &Path,
    source: &[std::ffi::OsString],
    out: &Path,
) -> Result<(), StoreError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), "-q".as_ref()];
    args.extend(source.iter().map(|a| a.as_os_str()));
    args.extend(["-O".as_ref(), "qcow2".as_ref(), out.as_os_str()]);
    let res = qemu_img(&args)?;
    if res.status.success() {
        return Ok(());
    }
    let stderr = stderr_of(&res);
    if stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded") {
        return Err(StoreError::Full {
            dir: out.parent().unwrap_or(out).to_path_buf(),
        });
    }
    Err(StoreError::QemuImg {
        action: "flatten",
        path: overlay.to_path_buf(),
        stderr,
    })
}
