// Swagger UI for /docs: started from this file because the page's CSP forbids inline script.
/* global SwaggerUIBundle */
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge fetches https://validator.swagger.io: nothing leaves this server.
    validatorUrl: null,
    // "Authorize" keeps the token or key for this tab only (not across reloads).
    persistAuthorization: false,
    tryItOutEnabled: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
