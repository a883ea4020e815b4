package config

import "path/filepath"

func dirOf(path string) string { return filepath.Dir(path) }

// resolve makes the local-mode file paths absolute, relative to dir.
func (c *Config) resolve(dir string) {
	for _, p := range []*string{&c.Local.Workloads, &c.Local.Policies, &c.Kubernetes.Kubeconfig} {
		if *p != "" && *p != "-" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if c.Audit.Path != "" && c.Audit.Path != "-" && !filepath.IsAbs(c.Audit.Path) {
		c.Audit.Path = filepath.Join(dir, c.Audit.Path)
	}
}
