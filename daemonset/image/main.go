// Command image writes the Portcullis agent image as an OCI archive (an OCI
// image layout in a tar file, loadable with `podman load`, `skopeo copy
// oci-archive:...` or `crane push`), without a container engine: one layer
// holding the static binaries on an empty base, the same layout as
// daemonset/Dockerfile.
//
//	go run . -agent ../../bin/portcullis-agent -cli ../../bin/portcullis -o ../../bin/portcullis-agent.oci.tar
//
// The image is reproducible: file times and the creation time come from
// SOURCE_DATE_EPOCH (zero when unset).
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	agent := flag.String("agent", "bin/portcullis-agent", "static agent binary")
	cli := flag.String("cli", "", "static portcullis CLI binary (optional)")
	out := flag.String("o", "bin/portcullis-agent.oci.tar", "output OCI archive")
	ref := flag.String("ref", "ghcr.io/portcullis-mesh/portcullis-agent:dev", "image reference recorded in the archive")
	arch := flag.String("arch", "amd64", "image architecture")
	flag.Parse()
	if err := run(*agent, *cli, *out, *ref, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(agent, cli, out, ref, arch string) error {
	epoch := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("parse SOURCE_DATE_EPOCH: %w", err)
		}
		epoch = time.Unix(n, 0).UTC()
	}
	files := map[string]string{"usr/local/bin/portcullis-agent": agent}
	if cli != "" {
		files["usr/local/bin/portcullis"] = cli
	}
	layerTar, err := buildLayer(files, epoch)
	if err != nil {
		return err
	}
	layer := static.NewLayer(layerTar, types.OCIUncompressedLayer)

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCIUncompressedLayer})
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{"/usr/local/bin/portcullis-agent"}
	cfg.Config.Cmd = []string{"--config=/etc/portcullis/agent.yaml"}
	cfg.Config.Env = []string{"PATH=/usr/local/bin"}
	cfg.Config.User = "0"
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/portcullis-mesh/portcullis"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	img, err = mutate.CreatedAt(img, v1.Time{Time: epoch})
	if err != nil {
		return fmt.Errorf("set creation time: %w", err)
	}

	dir, err := os.MkdirTemp("", "oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write oci layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref,
	})); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return tarDir(dir, out, epoch)
}

// buildLayer returns an uncompressed tar of files (path in image → source).
func buildLayer(files map[string]string, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, dst := range sortedKeys(files) {
		for d := filepath.Dir(dst); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	// Directories the agent mounts over or writes to.
	for _, d := range []string{"etc/portcullis", "var/run/portcullis", "sys/fs/bpf", "tmp"} {
		for ; d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range sortedKeys(dirs) {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	for _, dst := range sortedKeys(files) {
		data, err := os.ReadFile(files[dst])
		if err != nil {
			return nil, fmt.Errorf("read binary: %w", err)
		}
		if !isStaticELF(data) {
			return nil, fmt.Errorf("%s is not a static ELF executable (build with CGO_ENABLED=0)", files[dst])
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: 0o755, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isStaticELF reports whether data is an ELF file without a PT_INTERP
// program header (no dynamic loader: it runs on an empty base).
func isStaticELF(data []byte) bool {
	if len(data) < 64 || !bytes.Equal(data[:4], []byte("\x7fELF")) || data[4] != 2 {
		return false // not a 64-bit ELF
	}
	le := data[5] == 1
	u16 := func(b []byte) uint64 {
		if le {
			return uint64(b[0]) | uint64(b[1])<<8
		}
		return uint64(b[1]) | uint64(b[0])<<8
	}
	u64 := func(b []byte) uint64 {
		var v uint64
		for i := 0; i < 8; i++ {
			if le {
				v |= uint64(b[i]) << (8 * i)
			} else {
				v |= uint64(b[7-i]) << (8 * i)
			}
		}
		return v
	}
	phoff, phentsize, phnum := u64(data[32:40]), u16(data[54:56]), u16(data[56:58])
	for i := uint64(0); i < phnum; i++ {
		off := phoff + i*phentsize
		if off+4 > uint64(len(data)) {
			return false
		}
		const ptInterp = 3
		if uint32(u16(data[off:off+2])|u16(data[off+2:off+4])<<16) == ptInterp {
			return false
		}
	}
	return true
}

// tarDir writes the files under dir into a tar archive at out.
func tarDir(dir, out string, mtime time.Time) (err error) {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	tw := tar.NewWriter(f)
	walkErr := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime = filepath.ToSlash(rel), mtime
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			defer src.Close()
			if _, err := io.Copy(tw, src); err != nil {
				return err
			}
		}
		return nil
	})
	if walkErr != nil {
		return fmt.Errorf("write %s: %w", out, walkErr)
	}
	return tw.Close()
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
