// How clients name a project's registry. The server decides (host style `{project}.{region}.{domain}`
// or path style `host:port/{project}`, with the port) and says it in each project: the console
// prints what it is given and computes nothing.

/** What `docker login` takes. */
export function loginAddress(project) {
  return project.registry_address;
}

/** Path style: the login address is the server's, the same for every project (the project is
 * in the image names), so a client's one login for it serves one project at a time. */
export function sharedAddress(project) {
  return project.image_prefix !== project.registry_address;
}

/** `address/` before a repository name (path style: with the project). */
export function imagePrefix(project) {
  return `${project.image_prefix}/`;
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
