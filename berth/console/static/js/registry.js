// How clients name this project's registry. On a real domain a project is a host,
// `{project}.{region}.{domain}`; reached by IP address or `localhost` (a laptop, a test), the
// same server takes path-style names, `host:port/{project}/...`.

function pathStyle() {
  const host = location.hostname;
  return host === "localhost" || /^[\d.]+$/.test(host) || host.startsWith("[");
}

/** What `docker login` takes. */
export function loginAddress(project) {
  if (pathStyle()) return location.host;
  return project.registry_host + (location.port ? `:${location.port}` : "");
}

/** `address/` before a repository name (path style: with the project). */
export function imagePrefix(project) {
  if (pathStyle()) return `${location.host}/${project.name}/`;
  return `${loginAddress(project)}/`;
}

export function imageName(project, repository, image = "") {
  return imagePrefix(project) + repository + (image ? `/${image}` : "");
}

export function dockerLogin(project, keyId, secret) {
  return `docker login ${loginAddress(project)} --username ${keyId} --password ${secret}`;
}

export function pullSecret(project, keyId, secret) {
  return [
    `kubectl create secret docker-registry ${project.name}-pull \\`,
    `  --docker-server=${loginAddress(project)} \\`,
    `  --docker-username=${keyId} \\`,
    `  --docker-password=${secret}`,
  ].join("\n");
}
