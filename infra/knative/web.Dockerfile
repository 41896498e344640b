# syntax=docker/dockerfile:1
# The web client as a small static container: scripts/build-web's files behind nginx
# (unprivileged, port 8080). config.json (where the APIs are) is not in the image: the web
# Service mounts it from the `web-config` ConfigMap (base/web.yaml).
#   docker build -f infra/knative/web.Dockerfile -t messaging/web:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    rustup target add wasm32-unknown-unknown \
    && ./scripts/build-web /out

FROM nginxinc/nginx-unprivileged:1.27-alpine
COPY --from=build /out /usr/share/nginx/html
COPY infra/knative/web-nginx.conf /etc/nginx/conf.d/default.conf
EXPOSE 8080
