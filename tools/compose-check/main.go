// Command compose-check validates docker-compose.yml without a Docker engine,
// with the library Docker Compose itself is built on (compose-go): the full
// Compose Specification schema, ${VAR} interpolation, normalization and the
// loader's own consistency checks. It then checks the rules this project
// relies on (see checkProject).
//
//	compose-check [-env] FILE [FILE...]
//
// Several files merge like `docker compose -f a -f b`. By default ${VAR} is
// resolved from nothing, so every variable takes the default written in the
// file and the result does not depend on the caller's shell: that is what a
// check of the committed file wants. With -env, variables come from the
// shell and from the .env file beside the first compose file, exactly as
// `docker compose` resolves them on this machine.
//
// Exit status: 0 valid, 1 invalid, 2 usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
)

// projectName is a fixed dummy: the name only matters to a running engine.
const projectName = "compose-check"

// appServices are the services this repository ships, with the container
// port each one must listen on and publish under the same number.
var appServices = []struct {
	name string
	port uint32
}{
	{"command-service", 5000},
	{"query-service", 5001},
}

// backingServices are the servers both application services wait for.
var backingServices = []string{"mongo", "redis"}

func main() {
	useEnv := flag.Bool("env", false, "resolve ${VAR} from the shell and the .env file beside the first compose file, as docker compose does")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: compose-check [-env] FILE [FILE...]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	files := flag.Args()
	if len(files) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	label := strings.Join(files, " + ")

	project, warnings, err := load(files, *useEnv)
	if err != nil {
		fail(label, []string{explain(err)})
	}
	// Docker Compose only warns about these (an unset variable silently
	// becomes "", an obsolete `version:` key is ignored); a check treats them
	// as the mistakes they usually are.
	problems := append(warnings, checkProject(project)...)
	if len(problems) > 0 {
		fail(label, problems)
	}
	names := project.ServiceNames()
	slices.Sort(names)
	fmt.Printf("%s: valid (services: %s)\n", label, strings.Join(names, ", "))
}

func fail(label string, problems []string) {
	fmt.Fprintf(os.Stderr, "%s: INVALID\n", label)
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "  - %s\n", p)
	}
	os.Exit(1)
}

// load reads the files the way `docker compose config` does, with schema
// validation, interpolation, normalization, consistency checks and paths
// resolved relative to the first file. It returns the loader's warnings too.
func load(files []string, useEnv bool) (*types.Project, []string, error) {
	hook := &warningHook{}
	logrus.SetOutput(io.Discard)
	logrus.AddHook(hook)

	for _, f := range files {
		info, err := os.Stat(f)
		if err != nil {
			return nil, nil, fmt.Errorf("cannot read %s: %w", f, err)
		}
		if info.IsDir() {
			return nil, nil, fmt.Errorf("%s is a directory, not a compose file", f)
		}
	}

	opts := []cli.ProjectOptionsFn{
		cli.WithName(projectName),
		cli.WithWorkingDirectory(filepath.Dir(files[0])),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	}
	if useEnv {
		// As docker compose does it: the shell, then the .env file of the
		// project directory (or COMPOSE_DISABLE_ENV_FILE); the shell wins.
		opts = append(opts, cli.WithOsEnv, cli.WithEnvFiles(), cli.WithDotEnv)
	}
	options, err := cli.NewProjectOptions(files, opts...)
	if err != nil {
		return nil, nil, err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return nil, hook.messages, err
	}
	return project, hook.messages, nil
}

// warningHook collects what compose-go logs at warning level or worse.
type warningHook struct{ messages []string }

func (h *warningHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (h *warningHook) Fire(e *logrus.Entry) error {
	// A variable used in a shared anchor warns once per use: say it once.
	msg := "compose warning: " + e.Message
	if !slices.Contains(h.messages, msg) {
		h.messages = append(h.messages, msg)
	}
	return nil
}

// explain makes the schema's terse answer to an unknown key readable, e.g.
// "services.web.prots false schema" (the schema allows no such property).
func explain(err error) string {
	msg := err.Error()
	if before, ok := strings.CutSuffix(msg, " false schema"); ok {
		return before + ": key not allowed here by the Compose Specification (misspelt or misplaced?)"
	}
	return msg
}

// checkProject enforces what the services need from each other and from the
// compose file, beyond what the Compose Specification can express.
func checkProject(p *types.Project) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	for _, name := range backingServices {
		svc, ok := p.Services[name]
		switch {
		case !ok:
			add("service %q is missing", name)
		case svc.HealthCheck == nil || svc.HealthCheck.Disable || len(svc.HealthCheck.Test) == 0:
			// `condition: service_healthy` on a service without a healthcheck
			// makes `docker compose up` fail.
			add("service %q has no healthcheck, so depends_on condition service_healthy cannot be met", name)
		}
	}

	streams := map[string]string{}
	redisURLs := map[string]string{}
	for _, app := range appServices {
		svc, ok := p.Services[app.name]
		if !ok {
			add("service %q is missing", app.name)
			continue
		}
		want := strconv.FormatUint(uint64(app.port), 10)

		if !publishes(svc, app.port) {
			add("%s must publish port %d as %q (ports: %s)", app.name, app.port, want+":"+want, describePorts(svc.Ports))
		}
		if port, set := env(svc, "PORT"); set && port != want {
			add("%s sets PORT=%q but its published container port is %s", app.name, port, want)
		}

		for _, key := range []string{"MONGO_URL", "REDIS_URL", "EVENTS_STREAM"} {
			value, set := env(svc, key)
			if !set || value == "" {
				add("%s: environment variable %s is missing or empty", app.name, key)
				continue
			}
			switch key {
			case "EVENTS_STREAM":
				streams[app.name] = value
			case "REDIS_URL":
				redisURLs[app.name] = value
				problems = append(problems, checkURL(app.name, key, value, "redis", "rediss")...)
			case "MONGO_URL":
				problems = append(problems, checkURL(app.name, key, value, "mongodb", "mongodb+srv")...)
			}
		}

		for _, dep := range backingServices {
			d, ok := svc.DependsOn[dep]
			if !ok {
				add("%s must depend_on %s (condition: service_healthy)", app.name, dep)
			} else if d.Condition != types.ServiceConditionHealthy {
				add("%s depends_on %s with condition %q; want %q", app.name, dep, d.Condition, types.ServiceConditionHealthy)
			}
		}

		if svc.Build != nil {
			problems = append(problems, checkBuild(app.name, svc.Build)...)
		}
	}

	cmd, qry := appServices[0].name, appServices[1].name
	if a, b := streams[cmd], streams[qry]; a != "" && b != "" && a != b {
		add("EVENTS_STREAM differs: %s writes to %q but %s reads %q", cmd, a, qry, b)
	}
	if a, b := redisURLs[cmd], redisURLs[qry]; a != "" && b != "" && a != b {
		add("REDIS_URL differs: %s publishes to %q but %s consumes from %q", cmd, redact(a), qry, redact(b))
	}
	return problems
}

// env returns a service's environment variable after interpolation.
func env(svc types.ServiceConfig, key string) (string, bool) {
	v, ok := svc.Environment[key]
	if !ok || v == nil {
		return "", false
	}
	return *v, true
}

func publishes(svc types.ServiceConfig, port uint32) bool {
	want := strconv.FormatUint(uint64(port), 10)
	for _, p := range svc.Ports {
		if p.Target == port && p.Published == want && (p.Protocol == "" || p.Protocol == "tcp") {
			return true
		}
	}
	return false
}

func describePorts(ports []types.ServicePortConfig) string {
	if len(ports) == 0 {
		return "none"
	}
	var out []string
	for _, p := range ports {
		s := fmt.Sprintf("%s:%d", p.Published, p.Target)
		if p.Protocol != "" && p.Protocol != "tcp" {
			s += "/" + p.Protocol
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// checkURL wants one of the schemes and no loopback host: inside a container
// 127.0.0.1 is the container itself, never the mongo or redis service. (The
// usual cause is a .env made from .env.example, whose values are for running
// the binaries directly; docker compose reads .env for ${VAR} too.)
func checkURL(service, key, value string, schemes ...string) []string {
	scheme, rest, ok := strings.Cut(value, "://")
	if !ok || !slices.Contains(schemes, strings.ToLower(scheme)) {
		return []string{fmt.Sprintf("%s: %s=%q should start with %s://", service, key, redact(value), strings.Join(schemes, ":// or "))}
	}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	for _, hostport := range strings.Split(rest, ",") {
		host := hostport
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		ip := net.ParseIP(host)
		if strings.EqualFold(host, "localhost") || (ip != nil && (ip.IsLoopback() || ip.IsUnspecified())) {
			return []string{fmt.Sprintf("%s: %s=%q points at %s, which inside a container is the container itself; use the compose service name (is a .env file or an exported %s overriding the default?)", service, key, redact(value), host, key)}
		}
	}
	return nil
}

// redact hides a password in a connection string.
func redact(value string) string {
	scheme, rest, ok := strings.Cut(value, "://")
	if !ok {
		return value
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return value
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return value
	}
	return scheme + "://" + user + ":***" + rest[at:]
}

// fromAs matches `FROM [--flags] image AS name` in a Dockerfile.
var fromAs = regexp.MustCompile(`(?im)^[ \t]*FROM[ \t]+(?:--\S+[ \t]+)*\S+[ \t]+AS[ \t]+(\S+)[ \t]*$`)

// checkBuild wants the Dockerfile to exist and to define the build target.
func checkBuild(service string, b *types.BuildConfig) []string {
	if b.DockerfileInline != "" || strings.Contains(b.Context, "://") {
		return nil
	}
	dockerfile := b.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(b.Context, dockerfile)
	}
	content, err := os.ReadFile(dockerfile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return []string{fmt.Sprintf("%s: build Dockerfile %s does not exist", service, dockerfile)}
		}
		return []string{fmt.Sprintf("%s: cannot read %s: %v", service, dockerfile, err)}
	}
	if b.Target == "" {
		return nil
	}
	var stages []string
	for _, m := range fromAs.FindAllSubmatch(content, -1) {
		stages = append(stages, strings.ToLower(string(m[1])))
	}
	if !slices.Contains(stages, strings.ToLower(b.Target)) {
		return []string{fmt.Sprintf("%s: build target %q is not a stage of %s (stages: %s)", service, b.Target, dockerfile, strings.Join(stages, ", "))}
	}
	return nil
}
