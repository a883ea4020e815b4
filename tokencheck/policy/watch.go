package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Paths are policy files and/or directories of *.yaml files. Required.
	Paths []string
	// Store receives every successfully compiled Set. Required.
	Store *Store
	// Debounce is how long the files must stay quiet before a reload, so
	// an editor's or kubelet's burst of writes is one reload. Zero means
	// 200ms.
	Debounce time.Duration
	// Logger receives reload results. Nil means no logging.
	Logger *slog.Logger
	// OnReload, if not nil, is called after every reload attempt that
	// found changed content, with the new Set or the error; err is nil
	// exactly when set is not nil.
	OnReload func(set *Set, err error)
}

// Watcher reloads local policy files when they change (local mode).
type Watcher struct {
	cfg      WatcherConfig
	log      *slog.Logger
	lastSum  [sha256.Size]byte
	loadedOK bool
	// inForce is set once a load succeeded: a later invalid edit then
	// keeps that Set and is never fatal.
	inForce bool
}

// NewWatcher checks cfg and returns a Watcher; Run starts it.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if len(cfg.Paths) == 0 {
		return nil, errors.New("new policy watcher: no paths")
	}
	if cfg.Store == nil {
		return nil, errors.New("new policy watcher: no store")
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 200 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Watcher{cfg: cfg, log: log}, nil
}

// Load loads and compiles the files now, as Run does first, and returns
// the error, so that a caller can start from a compiled Set before it
// starts Run; Run then reloads only if the files changed since.
func (w *Watcher) Load() error { return w.reload() }

// Run loads the files once (unless Load did and they are unchanged), then
// watches them until ctx is done. It returns the initial load error when no
// Set was loaded yet (so a configuration that never worked is fatal to the
// caller), a watch setup error, or nil when ctx ends. Invalid edits after
// a successful load are logged and keep the running Set.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy files: %w", err)
	}
	defer fw.Close()
	// Watch directories, not files: editors and kubelet (ConfigMap
	// volumes) replace files by renaming, which ends a watch on the file.
	dirs := make(map[string]bool)
	for _, p := range w.cfg.Paths {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("watch policy files: %w", err)
		}
		dir := p
		if !st.IsDir() {
			dir = filepath.Dir(p)
		}
		if !dirs[dir] {
			if err := fw.Add(dir); err != nil {
				return fmt.Errorf("watch policy directory %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}
	if err := w.reload(); err != nil && !w.inForce {
		return err
	}

	timer := time.NewTimer(w.cfg.Debounce)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("watch policy files: watcher closed")
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			timer.Reset(w.cfg.Debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("watch policy files: watcher closed")
			}
			// An overflow loses events: reload to be sure.
			w.log.Warn("policy watch error", "error", err)
			timer.Reset(w.cfg.Debounce)
		case <-timer.C:
			_ = w.reload() // logged and reported through OnReload
		}
	}
}

// reload loads and compiles the files unless their content is unchanged.
func (w *Watcher) reload() error {
	objs, sum, err := loadFiles(w.cfg.Paths)
	if err == nil && w.loadedOK && sum == w.lastSum {
		return nil
	}
	var set *Set
	if err == nil {
		set, err = w.cfg.Store.Update(objs)
	}
	if err != nil {
		var perr *Error
		if errors.As(err, &perr) {
			// Remember refused content too, so it is reported once.
			w.lastSum, w.loadedOK = sum, true
		}
		if w.inForce {
			w.log.Error("policy reload refused, keeping the running policies", "error", err)
		} else {
			w.log.Error("policies refused", "error", err)
		}
		if w.cfg.OnReload != nil {
			w.cfg.OnReload(nil, err)
		}
		return fmt.Errorf("load policies: %w", err)
	}
	w.lastSum, w.loadedOK, w.inForce = sum, true, true
	st := w.cfg.Store.Stats()
	w.log.Info("policies loaded", "generation", st.Generation, "policies", st.Policies,
		"rules", st.Rules, "compile_seconds", st.CompileDuration.Seconds())
	if w.cfg.OnReload != nil {
		w.cfg.OnReload(set, nil)
	}
	return nil
}
