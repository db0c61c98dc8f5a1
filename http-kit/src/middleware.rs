//! [`before`]: a middleware from a function that looks at (and may change) a request
//! before it is routed on, and may answer it at once instead. The bearer check, the
//! connection gate and the body deadline are such functions.

use std::rc::Rc;

use actix_web::HttpResponse;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use futures_util::future::{LocalBoxFuture, Ready, ready};

/// A middleware running `f` first: `Some(answer)` answers the request with it (nothing
/// behind the middleware runs, the body is not read); `None` passes it on.
pub fn before<F>(f: F) -> Before<F>
where
    F: Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static,
{
    Before(Rc::new(f))
}

pub struct Before<F>(Rc<F>);

impl<F> Clone for Before<F> {
    fn clone(&self) -> Self {
        Before(self.0.clone())
    }
}

impl<S, B, F> Transform<S, ServiceRequest> for Before<F>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    F: Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = BeforeService<S, F>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BeforeService {
            service,
            f: self.0.clone(),
        }))
    }
}

pub struct BeforeService<S, F> {
    service: S,
    f: Rc<F>,
}

impl<S, B, F> Service<ServiceRequest> for BeforeService<S, F>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    F: Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        if let Some(answer) = (self.f)(&mut req) {
            return Box::pin(ready(Ok(req.into_response(answer).map_into_right_body())));
        }
        let fut = self.service.call(req);
        Box::pin(async move { Ok(fut.await?.map_into_left_body()) })
    }
}
