// Command cnitool is a small CNI client for Pontoon's test-suite, built on the
// libcni that Debian ships (golang-github-appc-cni-dev 1.1.2, the same library
// podman 4.3 and containerd 1.6 use on bookworm).
//
//	cnitool add|check|del NETNAME NETNS_PATH
//	cnitool gc|status NETNAME [NETNS_PATH]
//
// Environment:
//
//	NETCONFPATH            conflist directory (default /etc/cni/net.d)
//	CNI_PATH               plugin directories, ':'-separated (default /opt/cni/bin)
//	CAP_ARGS               JSON object of capability args (runtimeConfig)
//	CNI_ARGS               K=V;K2=V2
//	                       (check/del: if unset, the values cached by add)
//	CNI_IFNAME             interface name (default eth0)
//	CNI_CONTAINERID        container id (default derived from NETNS_PATH)
//	CNI_CACHE_DIR          libcni result cache (default /var/lib/cni)
//	CNI_VALID_ATTACHMENTS  gc only: JSON [{"containerID":..,"ifname":..}] (default [])
//
// del falls back to the conflist cached by add when NETNAME is no longer in
// NETCONFPATH, and accepts an empty NETNS_PATH (as containerd sends).
//
// add prints the result JSON on stdout. Failures go to stderr (the last line
// is {"code":N,"msg":..,"details":..} when a plugin returned a CNI error) and
// the exit status is 1 (2 for usage errors).
//
// libcni 1.1.2 implements spec 1.0.0 only and has no GC/STATUS API, so gc and
// status follow libcni 1.2's GCNetworkList/GetStatusNetworkList by hand.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const usage = "usage: cnitool add|check|del NETNAME NETNS_PATH | gc|status NETNAME [NETNS_PATH]"

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "cnitool: %v\n", err)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		b, _ := json.Marshal(cniErr)
		fmt.Fprintln(os.Stderr, string(b))
	}
	os.Exit(1)
}

// parseCNIArgs splits "K=V;K2=V2" the way runtimes hand it to libcni.
func parseCNIArgs(s string) ([][2]string, error) {
	var out [][2]string
	if s == "" {
		return out, nil
	}
	for _, pair := range strings.Split(s, ";") {
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

type cachedAttachment struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	CniArgs        [][2]string            `json:"cniArgs,omitempty"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs,omitempty"`
}

// gcAttachment is libcni 1.2's types.GCAttachment (absent from 1.1.2).
type gcAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// rawList holds the spec-1.1 keys libcni 1.1.2 does not parse.
type rawList struct {
	CNIVersion  string   `json:"cniVersion"`
	CNIVersions []string `json:"cniVersions"`
	DisableGC   bool     `json:"disableGC"`
}

// listVersion picks the highest of cniVersion and cniVersions, like libcni 1.2.
func listVersion(r rawList) string {
	best := r.CNIVersion
	for _, v := range r.CNIVersions {
		if best == "" {
			best = v
		} else if gt, err := version.GreaterThanOrEqualTo(v, best); err == nil && gt {
			best = v
		}
	}
	return best
}

// execEach runs verb (GC or STATUS) on every plugin of the list in order.
func execEach(ctx context.Context, list *libcni.NetworkConfigList, ver string, paths []string,
	verb string, inject map[string]interface{}, stopOnError bool) error {
	var msgs []string
	var first error
	for _, p := range list.Plugins {
		err := func() error {
			conf, err := libcni.InjectConf(p, inject)
			if err != nil {
				return err
			}
			path, err := invoke.FindInPath(p.Network.Type, paths)
			if err != nil {
				return err
			}
			args := &invoke.Args{Command: verb, Path: strings.Join(paths, string(os.PathListSeparator))}
			return invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, args, nil)
		}()
		if err != nil {
			err = fmt.Errorf("plugin type=%q failed (%s): %w", p.Network.Type, strings.ToLower(verb), err)
			if stopOnError {
				return err
			}
			if first == nil {
				first = err
			}
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) > 1 {
		return fmt.Errorf("%s (first: %w)", strings.Join(msgs, "; "), first)
	}
	return first
}

func gc(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, raw rawList,
	paths []string, cacheDir string) error {
	if raw.DisableGC {
		return nil
	}
	valid := []gcAttachment{}
	if s := os.Getenv("CNI_VALID_ATTACHMENTS"); s != "" {
		if err := json.Unmarshal([]byte(s), &valid); err != nil {
			return fmt.Errorf("CNI_VALID_ATTACHMENTS: %w", err)
		}
	}
	keep := map[[2]string]bool{}
	for _, a := range valid {
		keep[[2]string{a.ContainerID, a.IfName}] = true
	}
	// 1. synthetic DEL for every cached attachment of this network not in the valid list
	files, _ := filepath.Glob(filepath.Join(cacheDir, "results", "*"))
	var errs []string
	for _, f := range files {
		data, err := ioutil.ReadFile(f)
		if err != nil {
			continue
		}
		var c cachedAttachment
		if json.Unmarshal(data, &c) != nil || c.Kind != libcni.CNICacheV1 || c.NetworkName != list.Name {
			continue
		}
		if keep[[2]string{c.ContainerID, c.IfName}] {
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: c.ContainerID, IfName: c.IfName, Args: c.CniArgs, CapabilityArgs: c.CapabilityArgs}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	// 2. the GC verb itself, for spec >= 1.1.0
	ver := listVersion(raw)
	if ok, _ := version.GreaterThanOrEqualTo(ver, "1.1.0"); !ok {
		return nil
	}
	inject := map[string]interface{}{
		"name": list.Name, "cniVersion": ver,
		"cni.dev/valid-attachments": valid, "cni.dev/attachments": valid,
	}
	return execEach(ctx, list, ver, paths, "GC", inject, false)
}

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	verb, netName, netns := os.Args[1], os.Args[2], ""
	if len(os.Args) == 4 {
		netns = os.Args[3]
	}
	switch verb {
	case "add", "check", "del":
		if len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
	case "gc", "status":
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if netns != "" && verb != "del" {
		abs, err := filepath.Abs(netns)
		if err != nil {
			fail(err)
		}
		netns = abs
	}

	confDir := envOr("NETCONFPATH", "/etc/cni/net.d")
	paths := filepath.SplitList(envOr("CNI_PATH", "/opt/cni/bin"))
	cacheDir := envOr("CNI_CACHE_DIR", libcni.CacheDir)

	capArgs := map[string]interface{}{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail(fmt.Errorf("CAP_ARGS: %w", err))
		}
	}
	cniArgs, err := parseCNIArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(err)
	}
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		sum := sha256.Sum256([]byte(netns))
		containerID = "cnitool-" + hex.EncodeToString(sum[:])[:16]
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         envOr("CNI_IFNAME", "eth0"),
		Args:           cniArgs,
		CapabilityArgs: capArgs,
	}
	cni := libcni.NewCNIConfigWithCacheDir(paths, cacheDir, nil)

	// Like CRI-O's ocicni, check/del reuse what ADD cached: its capability
	// args and CNI_ARGS unless given again, and for del its conflist if the
	// network is gone from NETCONFPATH.
	var cachedConf []byte
	if verb == "check" || verb == "del" {
		conf, cachedRt, err := cni.GetNetworkListCachedConfig(&libcni.NetworkConfigList{Name: netName}, rt)
		if err == nil && cachedRt != nil {
			cachedConf = conf
			if _, set := os.LookupEnv("CAP_ARGS"); !set {
				rt.CapabilityArgs = cachedRt.CapabilityArgs
			}
			if _, set := os.LookupEnv("CNI_ARGS"); !set {
				rt.Args = cachedRt.Args
			}
		}
	}

	list, err := libcni.LoadConfList(confDir, netName)
	if err != nil && verb == "del" && cachedConf != nil {
		list, err = libcni.ConfListFromBytes(cachedConf)
	}
	if err != nil {
		fail(err)
	}
	var raw rawList
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		fail(err)
	}

	ctx := context.Background()

	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "gc":
		err = gc(ctx, cni, list, raw, paths, cacheDir)
	case "status":
		ver := listVersion(raw)
		if ok, _ := version.GreaterThanOrEqualTo(ver, "1.1.0"); ok {
			inject := map[string]interface{}{"name": list.Name, "cniVersion": ver}
			err = execEach(ctx, list, ver, paths, "STATUS", inject, true)
		}
	}
	if err != nil {
		fail(err)
	}
}
