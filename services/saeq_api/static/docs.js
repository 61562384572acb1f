// Swagger UI for /docs, from this origin's own copy (the CSP allows no inline or remote script).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // the default sends the schema to a public validator
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
