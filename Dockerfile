# Serving image: Deno + onnxruntime-node + the embedded model.
# (The GPU variant with the CUDA execution provider, non-root user and volumes is finished by the
# production issue; this image runs the CPU provider.)
FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN npm install -g deno@2.9.6
COPY deno.json deno.lock ./
COPY . .
# Deno does not run onnxruntime-node's install script (it fetches the CUDA provider); CPU ships inside.
RUN deno install --entrypoint main.ts

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=build /usr/local/lib/node_modules/deno /usr/local/lib/node_modules/deno
RUN ln -s /usr/local/lib/node_modules/deno/bin.cjs /usr/local/bin/deno
COPY --from=build /app /app
ENV PORT=8000 HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["deno", "task", "start"]
